//! What every client of netmaster's admin gRPC service (racklinectl, ipamd)
//! shares with the server: how a follower that refuses a write names the
//! leader, and the one parser that reads it.

pub mod redirect;
