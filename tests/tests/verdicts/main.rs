//! Verdict tests: crafted frames through both programs with `BPF_PROG_TEST_RUN`. Needs root.
//!
//! Every case names the reason it expects, and the harness checks that exactly that reason's
//! counter moved, so a case that passes for the wrong reason fails. Note: the kernel's test run
//! refuses frames shorter than an Ethernet header (EINVAL), so truncation inside the first 14
//! bytes cannot be exercised here; the parser checks it like every other layer.
//!
//! One module a subject: the table of cases every hook must agree on ([`cases`], run by [`table`]), the layer-3
//! program on the same cases ([`layer3`]), the source check of XDP ([`sources`]), events and
//! counters ([`events`]), connections kept past their address ([`flows`]), client groups
//! ([`groups`]), what the map writer puts in the kernel ([`policy_maps`]) and the
//! kernel's own log lines ([`kernel_log`]); [`common`] holds the policy they all run against.

mod cases;
mod common;
mod events;
mod flows;
mod groups;
mod kernel_log;
mod layer3;
mod policy_maps;
mod sources;
mod table;
