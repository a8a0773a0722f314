//! egress-filter's userspace: rule files, the compiler from rules to the allow table, the kernel
//! maps it is written to, and loading the kernel programs. The `egress-filter` binary
//! (`main.rs`) is the command line over these.

pub mod cmd;
pub mod compile;
pub mod counters;
pub mod daemon;
pub mod dns;
pub mod kernel_view;
pub mod learned_store;
pub mod loader;
pub mod maps;
pub mod metrics;
pub mod pins;
pub mod prefixes;
pub mod protocols;
pub mod ranges;
pub mod resolve;
pub mod risk;
pub mod rules;
pub mod state;
pub mod table;
