//! The release build's code layout: the functions an idle daemon runs go
//! side by side in `.text`.
//!
//! Why: the kernel maps an executable's code in 64 KiB blocks around each
//! page fault. Laid out by crate and module, the few functions that start
//! the daemon, route a request and answer SSH lie in half of those blocks,
//! and half the binary's code stays resident at idle.
//! `link/hot-functions.txt` (written by `scripts/code-order.sh` from a
//! callgrind run of the release daemon) lists them, and becomes lld's
//! `--symbol-ordering-file` (rustc and cc put each function in a section
//! of its own, which lld places in the list's order). A name that no
//! longer exists is skipped, so a stale list costs memory, never a build.
//!
//! Only the `cygni` executable of a release build for x86_64 Linux, where
//! rustc links with its own lld; not when RUSTFLAGS choose a linker, nor
//! with `CYGNI_NO_CODE_ORDER=1`.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=link/hot-functions.txt");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CYGNI_NO_CODE_ORDER");
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let release = env("PROFILE") == "release";
    let target = env("TARGET") == "x86_64-unknown-linux-gnu";
    let own_linker = env("CARGO_ENCODED_RUSTFLAGS").contains("link");
    if !release || !target || own_linker || std::env::var_os("CYGNI_NO_CODE_ORDER").is_some() {
        return;
    }
    let list = PathBuf::from(env("CARGO_MANIFEST_DIR")).join("link/hot-functions.txt");
    if !list.is_file() {
        println!("cargo:warning=no link/hot-functions.txt: the code keeps the linker's layout");
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=cygni=-Wl,--symbol-ordering-file={}",
        list.display()
    );
    println!("cargo:rustc-link-arg-bin=cygni=-Wl,--no-warn-symbol-ordering");
}
