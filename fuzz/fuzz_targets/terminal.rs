//! Terminal escaping: nothing a terminal acts on survives, and a stream
//! cut anywhere escapes like the whole.
#![no_main]

use cygni::ssh::terminal::{escape, Cr, Escaper};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, &[u8])| {
    let (cut, bytes) = input;
    for cr in [Cr::Keep, Cr::OnlyInCrLf] {
        let whole = escape(bytes, cr).into_owned();
        let text = std::str::from_utf8(&whole).expect("escaped output is UTF-8");
        for c in text.chars() {
            let control = c.is_control() && !matches!(c, '\n' | '\t' | '\r');
            assert!(!control, "{c:?} survived in {text:?}");
        }
        if cr == Cr::OnlyInCrLf {
            assert!(
                !text.replace("\r\n", "").contains('\r'),
                "lone CR in {text:?}"
            );
        }
        let at = (cut as usize).min(bytes.len());
        let mut e = Escaper::new(cr);
        let mut streamed = e.push(&bytes[..at]);
        streamed.extend(e.push(&bytes[at..]));
        streamed.extend(e.finish());
        assert_eq!(streamed, whole);
    }
});
