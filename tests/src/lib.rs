//! Helpers shared by the privileged suites in `tests/tests/`: crafted frames and a filter loaded
//! for `BPF_PROG_TEST_RUN`.

pub mod dns;
pub mod harness;
pub mod packet;
