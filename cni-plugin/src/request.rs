//! The one boundary: the raw invocation (environment, stdin) in, typed and
//! validated values out. Everything after it works on these types only.

use crate::conf::{sniff_version, NetConf};
use crate::env::CniEnv;
use crate::error::CniError;
use crate::Invocation;

/// A validated invocation.
#[derive(Debug)]
pub enum Request {
    /// VERSION reads nothing but `cniVersion` (the version to answer in).
    Version(String),
    Verb(Box<(CniEnv, NetConf)>),
}

/// Validates the environment first (code 4), then stdin for the verb
/// (codes 6, 7, 1).
pub fn parse(inv: &Invocation) -> Result<Request, CniError> {
    let env = CniEnv::from_os(&inv.env)?;
    if let CniEnv::Version = env {
        return Ok(Request::Version(sniff_version(&inv.stdin)));
    }
    if let Some(p) = &inv.stdin_problem {
        return Err(CniError::StdinUnreadable(p.clone()));
    }
    let conf = NetConf::parse(&inv.stdin, env.command())?;
    Ok(Request::Verb(Box::new((env, conf))))
}
