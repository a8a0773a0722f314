//! The verbs of the command line, one module each.

pub mod check;
pub mod import;
pub mod show;
