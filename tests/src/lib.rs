//! Shared helpers for the privileged suites.
