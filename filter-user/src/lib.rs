//! egress-filter's userspace: the allow table, the kernel maps it is written to, and loading the
//! kernel programs. The `egress-filter` binary (`main.rs`) is the command line over these.

pub mod loader;
pub mod maps;
pub mod table;
