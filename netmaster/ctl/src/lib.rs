//! racklinectl, netmaster's command-line client.
//!
//! - [`cli`]: flags, the commands, and their exit codes (CONTRACTS.md);
//! - [`render`]: their output, as tables or JSON.
//!
//! The calls go through the admin client racklinectl shares with ipamd
//! (`rackline-admin-client`): replica failover and leader following are
//! its. The binary only parses arguments and calls [`cli::run`].

pub mod cli;
pub mod render;
