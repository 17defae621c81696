//! Lays out the binary's code so that what a running server executes sits together.
//!
//! The kernel maps a binary's code into a process 64 KiB at a time around each page it runs
//! (fault-around). Left in the compiler's order, the 4–5 MiB of functions a server runs are
//! spread over nearly all of its 24 MiB of code, and nearly all of it ends up resident. The
//! functions listed in `layout/hot-functions.txt` (measured by `clients/load/hot-functions.sh`,
//! hottest first) are placed first, which keeps that code out of the resident set.
//!
//! The list names symbols; a name the build no longer has is skipped, so a stale list only
//! costs memory, never correctness. It is passed to the linker only where the linker is
//! Rust's default LLD (x86_64 Linux with no linker configured) and for optimised builds;
//! `DIPLOMATIE_NO_LAYOUT=1` at build time leaves the compiler's order (to compare).

use std::{env, path::Path};

fn main() {
    let list = Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap()).join("layout/hot-functions.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    println!("cargo:rerun-if-env-changed=DIPLOMATIE_NO_LAYOUT");
    // No linker configured (by cargo or by flags), on the target whose default is LLD.
    let target_is_default_lld = env::var("TARGET").as_deref() == Ok("x86_64-unknown-linux-gnu")
        && env::var_os("RUSTC_LINKER").is_none()
        && !env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default().contains("link")
        && rustc_minor().is_some_and(|minor| minor >= 90);
    let optimised = env::var("PROFILE").as_deref() == Ok("release");
    if target_is_default_lld && optimised && list.exists() && env::var_os("DIPLOMATIE_NO_LAYOUT").is_none() {
        println!(
            "cargo:rustc-link-arg-bin=diplomatie=-Wl,--symbol-ordering-file={},--no-warn-symbol-ordering",
            list.display()
        );
    }
}

/// The minor version of the compiler (LLD is the default linker from Rust 1.90 on).
fn rustc_minor() -> Option<u32> {
    let rustc = env::var_os("RUSTC")?;
    let out = std::process::Command::new(rustc).arg("--version").output().ok()?;
    let version = String::from_utf8(out.stdout).ok()?;
    version.split_whitespace().nth(1)?.split('.').nth(1)?.parse().ok()
}
