//! Rebuild when `bpf-linker` changes: the crate links with it, but cargo cannot know that.
use which::which;

fn main() {
    // Only the BPF build links with bpf-linker; the host build of this crate (a build-dependency
    // of filter-user, for cache invalidation) must not require it.
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("bpf") {
        return;
    }
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
