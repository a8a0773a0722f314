//! What every BPF object built from this crate needs once: a panic handler (the verifier
//! guarantees no panic path is reachable; this only satisfies `no_std`) and the licence section.
//! Each binary includes this file with `#[path]`, since each is its own crate root.

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible: `bpf_ktime_get_ns` and the ring buffer helpers are available to any program,
/// but a GPL-compatible licence keeps every helper open to future changes.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
