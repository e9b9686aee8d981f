//! What reaches a client's terminal: control characters made visible.
//!
//! Config values, app logs, build output and error messages can hold bytes
//! a terminal acts on (`ESC ] 0 ; title BEL`, `ESC [ 2 J`, an 8-bit CSI):
//! written raw they retitle, clear or reprogram the reader's terminal
//! (the class of Soft Serve's CVE-2025-64494). Everything the SSH side
//! writes for a person goes through [`escape`] or an [`Escaper`]:
//!
//! ```text
//! Exec::stdout / Exec::stderr ──► escape(.., Cr::OnlyInCrLf) ──► channel
//! git's stderr (receive-pack)  ──► Escaper(Cr::Keep) ───────────► channel
//! push progress (hook frames)  ──► escape(.., Cr::Keep) ─────────► hook ─► git ─► `remote:`
//! run (the one-off's own bytes), git's protocol stdout ──────────► channel, raw
//! ```
//!
//! The rule, one for every path:
//! - `\n` and `\t` pass;
//! - `\r` passes on the push path, where git's client already splits
//!   `remote:` output on it (progress bars), and elsewhere only as part of
//!   `\r\n`: a lone `\r` would let text overwrite what came before it;
//! - every other C0 control, DEL, the C1 controls (U+0080–U+009F) and the
//!   bidirectional overrides are written `\u001b`-style;
//! - bytes that are not UTF-8 are written `\xff`-style.
//!
//! The `\u00XX` form is JSON's own: serde_json already escapes every C0
//! control, so `--json` output passes unchanged, and where it differs (DEL,
//! C1, bidi marks, which JSON allows raw) the escape decodes to the very
//! same string. `--json` stays exact as JSON. A backslash is not escaped,
//! so a value that holds the six characters `\u001b` looks like one holding
//! ESC: for exact bytes, use `--json`.

use std::borrow::Cow;

/// What happens to a carriage return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cr {
    /// Pass every `\r` (the push path, whose `remote:` lines git prefixes).
    Keep,
    /// Pass `\r` only right before `\n`.
    OnlyInCrLf,
}

/// `input` as it may be shown on a terminal. Borrowed when nothing needed
/// escaping, which is nearly always.
pub fn escape(input: &[u8], cr: Cr) -> Cow<'_, [u8]> {
    if input.iter().all(|&b| is_plain(b)) {
        return Cow::Borrowed(input);
    }
    let mut out = Vec::with_capacity(input.len() + 16);
    let used = escape_into(input, cr, true, &mut out);
    debug_assert_eq!(used, input.len());
    Cow::Owned(out)
}

/// [`escape`] for text.
pub fn escape_str(input: &str, cr: Cr) -> Cow<'_, str> {
    match escape(input.as_bytes(), cr) {
        Cow::Borrowed(_) => Cow::Borrowed(input),
        // Escapes are ASCII and the rest was UTF-8: nothing is lost here.
        Cow::Owned(v) => Cow::Owned(String::from_utf8_lossy(&v).into_owned()),
    }
}

/// Text that may be shown as it is: printable ASCII, `\n`, `\t`. Anything
/// else takes the slow path.
fn is_plain(b: u8) -> bool {
    (0x20..0x7f).contains(&b) || b == b'\n' || b == b'\t'
}

/// [`escape`] for a stream that arrives in chunks: a UTF-8 sequence or a
/// `\r\n` split between two chunks is escaped as if it had come whole.
#[derive(Debug)]
pub struct Escaper {
    cr: Cr,
    pending: Vec<u8>,
}

impl Escaper {
    pub fn new(cr: Cr) -> Escaper {
        Escaper {
            cr,
            pending: Vec::new(),
        }
    }

    /// The escaped form of what can be decided so far.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut input = std::mem::take(&mut self.pending);
        input.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(input.len() + 16);
        let used = escape_into(&input, self.cr, false, &mut out);
        self.pending = input[used..].to_vec();
        out
    }

    /// The rest, at the end of the stream.
    pub fn finish(mut self) -> Vec<u8> {
        let input = std::mem::take(&mut self.pending);
        let mut out = Vec::new();
        escape_into(&input, self.cr, true, &mut out);
        out
    }
}

/// Escape `input` onto `out`; returns how much of `input` was used. With
/// `last` false, a tail that the next chunk may complete (a partial UTF-8
/// sequence, a `\r` that may precede `\n`) is left unused.
fn escape_into(input: &[u8], cr: Cr, last: bool, out: &mut Vec<u8>) -> usize {
    let mut rest = input;
    while !rest.is_empty() {
        let (valid, bad) = match std::str::from_utf8(rest) {
            Ok(s) => (s, None),
            Err(e) => {
                // The prefix up to valid_up_to is UTF-8 by definition.
                let s = std::str::from_utf8(&rest[..e.valid_up_to()]).unwrap_or_default();
                (s, Some(e.error_len()))
            }
        };
        for (i, c) in valid.char_indices() {
            match c {
                '\n' | '\t' => out.push(c as u8),
                '\r' => {
                    let next = valid.as_bytes().get(i + 1).copied().or_else(|| {
                        // The next byte is past the valid prefix.
                        rest.get(valid.len()).copied()
                    });
                    match (cr, next) {
                        (Cr::Keep, _) | (Cr::OnlyInCrLf, Some(b'\n')) => out.push(b'\r'),
                        (Cr::OnlyInCrLf, None) if !last => {
                            let used = input.len() - rest.len() + i;
                            return used;
                        }
                        _ => out.extend_from_slice(b"\\u000d"),
                    }
                }
                c if needs_escape(c) => {
                    out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
                }
                c => {
                    let mut b = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
            }
        }
        rest = &rest[valid.len()..];
        match bad {
            None => break,
            // Cut short at the end: the next chunk may complete it.
            Some(None) if !last => return input.len() - rest.len(),
            Some(None) => {
                for b in rest {
                    out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
                }
                rest = &[];
            }
            Some(Some(n)) => {
                for b in &rest[..n] {
                    out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
                }
                rest = &rest[n..];
            }
        }
    }
    input.len()
}

/// Characters a terminal may act on rather than show.
fn needs_escape(c: char) -> bool {
    matches!(c,
        '\0'..='\x1f' | '\x7f'..='\u{9f}'
        // Bidirectional marks and overrides reorder what is shown
        // ("Trojan Source").
        | '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(s: &[u8], cr: Cr) -> String {
        String::from_utf8(escape(s, cr).into_owned()).unwrap()
    }

    #[test]
    fn control_characters_are_shown() {
        assert_eq!(
            esc(b"\x1b]0;owned\x07\x1b[2J", Cr::OnlyInCrLf),
            "\\u001b]0;owned\\u0007\\u001b[2J"
        );
        assert_eq!(esc(b"a\tb\nc", Cr::OnlyInCrLf), "a\tb\nc");
        assert_eq!(esc(b"del\x7f", Cr::Keep), "del\\u007f");
        // An 8-bit CSI, as UTF-8 (U+009B) and as a lone byte.
        assert_eq!(esc("x\u{9b}2J".as_bytes(), Cr::Keep), "x\\u009b2J");
        assert_eq!(esc(b"x\x9b2J", Cr::Keep), "x\\x9b2J");
        assert_eq!(esc("a\u{202e}b".as_bytes(), Cr::Keep), "a\\u202eb");
        assert_eq!(esc("héllo ✓".as_bytes(), Cr::Keep), "héllo ✓");
    }

    #[test]
    fn carriage_returns() {
        assert_eq!(esc(b"a\r\nb\rc\r", Cr::OnlyInCrLf), "a\r\nb\\u000dc\\u000d");
        assert_eq!(esc(b"50%\r60%\r", Cr::Keep), "50%\r60%\r");
    }

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(escape(b"hello\n", Cr::Keep), Cow::Borrowed(_)));
    }

    /// JSON output passes unchanged, and DEL/C1/bidi escapes decode to the
    /// same string.
    #[test]
    fn json_stays_exact() {
        let value = "\x1b]0;owned\x07\x1b[2J\u{7f}\u{9b}\u{202e}\r\n\"\\";
        let json = serde_json::to_string_pretty(&value).unwrap();
        let shown = esc(json.as_bytes(), Cr::OnlyInCrLf);
        let back: String = serde_json::from_str(&shown).unwrap();
        assert_eq!(back, value);
        let plain = serde_json::to_string(&"\x1b[2J\t\n").unwrap();
        assert_eq!(esc(plain.as_bytes(), Cr::OnlyInCrLf), plain);
    }

    #[test]
    fn chunks_escape_like_the_whole() {
        let mut whole = "é\r\n\x1b[1m✓\r\nx".as_bytes().to_vec();
        whole.extend([0xe2, 0xff, b'\r', 0xe2, 0x9c]);
        for cr in [Cr::Keep, Cr::OnlyInCrLf] {
            let expected = escape(&whole, cr).into_owned();
            for split in 0..=whole.len() {
                let mut e = Escaper::new(cr);
                let mut got = e.push(&whole[..split]);
                got.extend(e.push(&whole[split..]));
                got.extend(e.finish());
                assert_eq!(got, expected, "split at {split} ({cr:?})");
            }
        }
    }
}
