//! Helpers shared by the privileged suites in `tests/tests/`: crafted frames and a filter loaded
//! for `BPF_PROG_TEST_RUN`.

pub mod daemon;
pub mod dns;
pub mod flood;
pub mod harness;
pub mod lab;
pub mod packet;
