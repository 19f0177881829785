//! What every module of the integration tests uses: the harness's helpers and the binary under
//! test.

pub use harness::*;

/// The binary under test, as cargo built it.
pub const BIN: &str = env!("CARGO_BIN_EXE_portfwd");
