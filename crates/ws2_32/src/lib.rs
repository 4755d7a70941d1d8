//! Winsock-compatible C interface (being built).
