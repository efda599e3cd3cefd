//! `kubectl-locall`, the kubectl plugin: `kubectl locall get|list|status|approve|promote|abort|
//! retry|pause|resume|rollback`. It reads LocallReleases and writes only the `locall.io/approve`
//! and `locall.io/request` annotations; never spec or status.

pub mod actions;
pub mod cli;
pub mod list;
pub mod tree;

pub use tree::render_tree;
