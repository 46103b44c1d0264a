//! What the `mathcoder` binary and `mathcoder-bench` share: flags defined once ([`args`]) and
//! progress bars ([`progress`]). No domain logic lives here.

pub mod args;
pub mod progress;
