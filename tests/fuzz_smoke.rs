//! The fuzz checks (`fuzz/checks.rs`) in every `cargo test`: a bounded
//! stream of inputs per check, mutated from seeds that hold what each
//! parser finds hard (quotes, escapes, Unicode, NULs, long runs). This is
//! not coverage-guided (that is `cargo fuzz`, whose instrumented build
//! takes about 45 minutes here), but it runs each property on every change.
//! `FUZZ_SMOKE_SEED` replays a failure; `FUZZ_SMOKE_CASES` sets the count.

#[path = "../fuzz/checks.rs"]
mod checks;

/// xorshift64*: small, deterministic from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that tend to break parsers, spliced in by the mutator.
const TOKENS: &[&[u8]] = &[
    b"'",
    b"\"",
    b"\\",
    b" ",
    b"\t",
    b"\n",
    b"\r\n",
    b"\r",
    b"\0",
    b"=",
    b":",
    b"--",
    b"-",
    b"/",
    b"..",
    b"#",
    b"$",
    b"`",
    b"{",
    b"}",
    b"[",
    b"]",
    b".git",
    b"\x1b]0;x\x07",
    b"\x1b[2J",
    b"\x9b",
    b"\xc3\xa9",
    b"\xe2\x80\x8b",
    b"\xf0\x9f\x98\x80",
    b"\xff",
    b"\xc0",
    b"xn--",
    b"\xe3\x80\x82",
    b"web",
    b"release",
    b"[healthcheck]",
    b"path = ",
    b"timeout = ",
    b"\"/health\"",
    b"9999999999999999999999",
    b"-1",
    b"apps:create",
    b"config:set",
    b"--json",
    b"--help",
    b"help",
    b"git-receive-pack",
    b"{\"token\":",
    b"\"updates\":[",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(6) {
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = rng.below(v.len() - i + 1);
                v.drain(i..i + n);
            }
            2 => {
                let i = rng.below(v.len() + 1);
                let t = TOKENS[rng.below(TOKENS.len())];
                v.splice(i..i, t.iter().copied());
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = rng.below(v.len() - i).min(64) + 1;
                let chunk: Vec<u8> = v[i..(i + n).min(v.len())].to_vec();
                for _ in 0..rng.below(8) {
                    v.extend_from_slice(&chunk);
                }
            }
            4 => v.truncate(rng.below(v.len() + 1)),
            _ => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
        }
    }
    v.truncate(4096);
    v
}

fn cases() -> usize {
    std::env::var("FUZZ_SMOKE_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

fn seed() -> u64 {
    std::env::var("FUZZ_SMOKE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|t| t.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        })
}

/// Run `check` on the seeds and on `cases()` mutations of them; a panic
/// names the input and the seed that replays it.
fn smoke(name: &str, seeds: &[&[u8]], check: impl Fn(&[u8])) {
    let seed = seed();
    let mut rng = Rng(seed);
    let mut input: Vec<u8> = Vec::new();
    for s in seeds {
        input = s.to_vec();
        check(&input);
    }
    for _ in 0..cases() {
        let base = if rng.below(4) == 0 {
            input.clone()
        } else {
            seeds[rng.below(seeds.len())].to_vec()
        };
        input = mutate(&mut rng, &base);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&input)));
        if let Err(panic) = caught {
            eprintln!(
                "{name}: FUZZ_SMOKE_SEED={seed} failed on {:?}",
                String::from_utf8_lossy(&input)
            );
            std::panic::resume_unwind(panic);
        }
    }
    eprintln!("{name}: {} cases, FUZZ_SMOKE_SEED={seed}", cases());
}

fn text(check: impl Fn(&str)) -> impl Fn(&[u8]) {
    move |b| check(&String::from_utf8_lossy(b))
}

#[test]
fn command_line_and_repo_argument() {
    smoke(
        "command_line",
        &[
            b"git-receive-pack '/shop.git'",
            b"git-upload-pack 'shop'",
            b"git-receive-pack \"../../etc/passwd\"",
            b"git-receive-pack '-shop'",
        ],
        text(checks::command_line),
    );
}

#[test]
fn admin_command_parser() {
    smoke(
        "ssh_command",
        &[
            b"apps:create shop",
            b"config:set shop A=1 'B=two words' --no-restart",
            b"logs shop -n 10 -f -p web",
            b"ps:scale shop web=2 worker=0",
            b"domains:add shop www.example.com",
            b"keys:add ci --role admin",
            b"rollback shop v3",
            b"storage:mount shop data:/data",
            b"apps:destroy shop --confirm shop",
            b"releases shop --json",
        ],
        text(checks::ssh_command),
    );
}

#[test]
fn cygni_toml() {
    smoke(
        "cygni_toml",
        &[
            b"[build]\nbuilder = \"buildpack:python\"\n[healthcheck]\npath = \"/health\"\ntimeout = 60\n",
            b"[healthcheck]\npath = \"/\"\n",
            b"[build]\nconfig_vars = [\"A\"]\n",
        ],
        checks::cygni_toml,
    );
}

#[test]
fn hook_protocol() {
    smoke(
        "hook_protocol",
        &[
            br#"{"token":"abc","updates":[{"old":"0000000000000000000000000000000000000000","new":"1111111111111111111111111111111111111111","name":"refs/heads/main"}],"quarantine":{"object_directory":"/tmp/x","alternate_object_directories":[]}}"#,
            br#"{"line":"hello"}"#,
            br#"{"verdict":"ok"}"#,
        ],
        text(checks::hook_protocol),
    );
}

#[test]
fn hosts_and_names() {
    smoke(
        "host",
        &[
            b"www.example.com",
            b"WWW.Example.COM.",
            b"b\xc3\xbccher.example",
            b"xn--bcher-kva.example",
            b"shop",
            b"a--b",
            b"localhost",
            b"1.2.3.4",
            b"[::1]",
        ],
        text(checks::host),
    );
}

#[test]
fn procfile() {
    smoke(
        "procfile",
        &[
            b"web: python3 -m http.server $PORT\nworker: ./work\n",
            b"release: ./migrate\nweb: bin/server --port \"$PORT\" # comment\n",
            b"# only a comment\n\n",
        ],
        text(checks::procfile),
    );
}

#[test]
fn terminal_escaping() {
    smoke(
        "terminal",
        &[
            b"\x1b]0;owned\x07\x1b[2J",
            b"plain line\r\nnext\rover",
            b"\xc2\x9b31m\xff\xfe",
        ],
        |b| {
            let cut = b.first().copied().unwrap_or(0);
            checks::terminal(cut, b);
        },
    );
}
