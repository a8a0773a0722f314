//! The verbs of the command line, one module each.

pub mod check;
pub mod detach;
pub mod import;
pub mod learned;
pub mod probe;
pub mod run;
pub mod show;
pub mod stats;
