//! Helpers shared by the privileged suites in `tests/tests/`: crafted frames and a filter loaded
//! for `BPF_PROG_TEST_RUN`, and what `cargo xtask dist` built.

pub mod daemon;
pub mod dist;
pub mod dns;
pub mod flood;
pub mod harness;
pub mod lab;
pub mod model;
pub mod node;
pub mod packet;
