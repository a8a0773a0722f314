//! The kernel programs live in the `egress-filter` binary target (`src/main.rs`), built for the
//! BPF target by `filter-user/build.rs`. This empty library lets that crate depend on this one so
//! that cargo rebuilds the programs when they change.
#![no_std]
