//! The lab's netmaster replicas (docs/CONTRACTS.md, "Fencing"): `.netmasters(n)` runs
//! `n` of them inside `ctrl`, replica `i` (1-based) listening on `<ctrl>:7650 + i - 1` with
//! `--id nm<i>`, `--advertise` its own listen address and a short leader lease
//! ([`NETMASTER_LEASE_TTL_SECS`]), so a crashed leader is replaced within seconds.
//!
//! Who leads is read from etcd (the leader key, the source of truth: racklinectl has no
//! `leader` command) and mapped to a replica by its advertise address. What each replica
//! *believes* is read from its own log, through the election events operators grep for
//! (docs/operations.md: `elected leader`, `following`, `leadership lost`), so a test can check
//! that exactly one replica acts as leader and every other one follows it.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::daemons::{daemon_command, wait_ready};
use crate::invariants::{base64_decode, ETCD_ROOT};
use crate::lab::{Lab, STOP_GRACE};
use crate::process::{Daemon, Output};
use crate::topology::NETMASTER_PORT;

/// Most netmaster replicas a lab runs (ports 7650..=7658).
pub const MAX_NETMASTERS: usize = 9;
/// `--lease-ttl-secs` of every replica: a SIGKILLed leader's key expires within this.
pub const NETMASTER_LEASE_TTL_SECS: u64 = 2;

/// The leader record in etcd (`/rackline/v1/netmaster/leader`), mapped to a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetmasterLeader {
    /// 1-based replica index.
    pub replica: usize,
    /// The record's `id` (`nm<i>`).
    pub id: String,
    /// The record's `advertise` (`<ctrl>:<port>`).
    pub advertise: String,
    /// The leader key's create_revision: the write fence, new with every election.
    pub fence: i64,
    /// The etcd lease the key is attached to.
    pub lease: i64,
}

/// A replica's view of the election: its last election event since it (re)started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaRole {
    /// "elected leader … fence=R".
    Leader { fence: i64 },
    /// "following leader=ID … fence=R".
    Follower { leader: String, fence: i64 },
    /// Lost its leader (key deleted, leadership lapsed): electing.
    Campaigning,
    /// Stopped, or no election event logged yet.
    Unknown,
}

/// `name=value` of a tracing field in a log line (values here contain no spaces).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

/// The last election event in `log` (a replica's log since its last start).
fn role_from_log(log: &str) -> ReplicaRole {
    let mut role = ReplicaRole::Unknown;
    for line in log.lines() {
        let fence = || field(line, "fence").and_then(|f| f.parse().ok());
        if line.contains(" elected leader") {
            if let Some(fence) = fence() {
                role = ReplicaRole::Leader { fence };
            }
        } else if line.contains(" following ") {
            if let (Some(leader), Some(fence)) = (field(line, "leader"), fence()) {
                role = ReplicaRole::Follower {
                    leader: leader.to_owned(),
                    fence,
                };
            }
        } else if line.contains("leader key deleted; campaigning")
            || line.contains("leadership lost")
        {
            role = ReplicaRole::Campaigning;
        } else if line.contains("netmaster stopped") {
            role = ReplicaRole::Unknown;
        }
    }
    role
}

impl Lab {
    /// How many netmaster replicas this lab runs (`.netmasters(n)`).
    pub fn netmaster_count(&self) -> usize {
        self.opts.netmasters
    }

    fn check_replica(&self, i: usize) {
        assert!(
            (1..=self.opts.netmasters).contains(&i),
            "lab has netmaster replicas 1..={}, not {i}",
            self.opts.netmasters
        );
    }

    /// Replica `i`'s listen and advertise address, `<ctrl>:<7650 + i - 1>`.
    pub fn netmaster_advertise(&self, i: usize) -> String {
        self.check_replica(i);
        let port = NETMASTER_PORT + u16::try_from(i - 1).expect("replica index fits a port");
        format!("{}:{port}", self.ctrl_addr())
    }

    /// Replica `i`'s URL (`https://<ctrl>:<port>`; `http://` in a `.tls(false)` lab).
    pub fn netmaster_replica_url(&self, i: usize) -> String {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.netmaster_advertise(i))
    }

    /// Replica 1's URL (`https://<ctrl>:7650`).
    pub fn netmaster_url(&self) -> String {
        self.netmaster_replica_url(1)
    }

    /// Every replica's URL, comma separated: ipamd's `--netmaster` (Spanning mode) and the
    /// lab's racklinectl `--server`.
    pub fn netmaster_urls(&self) -> String {
        (1..=self.opts.netmasters)
            .map(|i| self.netmaster_replica_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn netmaster_label(&self, i: usize) -> String {
        if self.opts.netmasters == 1 {
            "netmaster".into()
        } else {
            format!("netmaster-nm{i}")
        }
    }

    /// Starts replica 1 (see [`Lab::start_netmaster_replica`]).
    pub fn start_netmaster(&self) -> Result<()> {
        self.start_netmaster_replica(1)
    }

    /// Stops replica 1 gracefully (see [`Lab::stop_netmaster_replica`]).
    pub fn stop_netmaster(&self) -> Result<()> {
        self.stop_netmaster_replica(1)
    }

    /// Starts netmaster replica `i` inside `ctrl` and waits until racklinectl, pointed at this
    /// replica alone, lists networks through it (it serves once it leads or knows the leader,
    /// or after a bounded wait when no leader can be elected).
    pub fn start_netmaster_replica(&self, i: usize) -> Result<()> {
        let bins = self.bins()?;
        let advertise = self.netmaster_advertise(i);
        if self.state().netmasters.contains_key(&i) {
            bail!("netmaster nm{i} is already running");
        }
        let mut cmd = daemon_command(&bins.netmaster);
        cmd.args(self.etcd_client_args())
            .args(["--listen", &advertise])
            .args(["--id", &format!("nm{i}")])
            .args(["--advertise", &advertise])
            .args(["--lease-ttl-secs", &NETMASTER_LEASE_TTL_SECS.to_string()])
            .args(["--log-level", &self.opts.log_level])
            .args([
                "--metrics-listen",
                &self.netmaster_metrics_addr(i).to_string(),
            ])
            .args(&self.opts.netmaster_args);
        match &self.pki {
            Some(p) => cmd.args(p.netmaster_args()),
            // ctrl's address is not loopback: plaintext needs the explicit opt-in.
            None => cmd.arg("--insecure-listen"),
        };
        let label = self.netmaster_label(i);
        let mut nm = Daemon::spawn(&label, cmd, &self.ctrl, &self.log_path(&label))?;
        let url = self.netmaster_replica_url(i);
        wait_ready(
            &mut nm,
            &format!("`racklinectl --server {url} network list` exits 0"),
            || {
                self.racklinectl_at(&url, &["-o", "json", "network", "list"])
                    .is_ok_and(|o| o.success())
            },
        )?;
        self.state().netmasters.insert(i, nm);
        Ok(())
    }

    /// Stops replica `i` (SIGTERM: it revokes its lease, so a follower leads at once; SIGKILL
    /// after a grace period).
    pub fn stop_netmaster_replica(&self, i: usize) -> Result<()> {
        self.take_netmaster(i)?.stop(STOP_GRACE);
        Ok(())
    }

    /// SIGKILLs replica `i` (by pid): a crash. Its leader key, if it led, stays until the
    /// lease expires ([`NETMASTER_LEASE_TTL_SECS`]).
    pub fn kill_netmaster(&self, i: usize) -> Result<()> {
        self.take_netmaster(i)?.stop(Duration::ZERO);
        Ok(())
    }

    fn take_netmaster(&self, i: usize) -> Result<Daemon> {
        self.check_replica(i);
        self.state()
            .netmasters
            .remove(&i)
            .with_context(|| format!("netmaster nm{i} is not running"))
    }

    /// Pid of replica `i`, if it runs.
    pub fn netmaster_pid(&self, i: usize) -> Option<u32> {
        self.state().netmasters.get(&i).and_then(Daemon::pid)
    }

    /// Indices of the replicas this lab started and has not stopped (crashed ones included
    /// until [`Lab::check_one_netmaster_leader`] notices).
    pub fn running_netmasters(&self) -> Vec<usize> {
        self.state().netmasters.keys().copied().collect()
    }

    /// Runs `racklinectl --server <replica i only> <args>` inside `ctrl`, as is.
    pub fn racklinectl_replica(&self, i: usize, args: &[&str]) -> Result<Output> {
        self.racklinectl_at(&self.netmaster_replica_url(i), args)
    }

    /// The leader record in etcd (`None`: no leader key), mapped to the replica whose
    /// advertise address it names (an error when it names none of ours).
    pub fn netmaster_leader_record(&self) -> Result<Option<NetmasterLeader>> {
        let key = format!("{ETCD_ROOT}netmaster/leader");
        let out = self.etcdctl(&["get", &key, "-w", "json"])?.check()?;
        let doc: Value = serde_json::from_str(&out.stdout)
            .with_context(|| format!("etcdctl printed no JSON: {:?}", out.stdout))?;
        let Some(kv) = doc["kvs"].as_array().and_then(|kvs| kvs.first()) else {
            return Ok(None);
        };
        let value = base64_decode(kv["value"].as_str().unwrap_or_default())?;
        let record: Value = serde_json::from_slice(&value)
            .with_context(|| format!("{key} holds no JSON: {}", String::from_utf8_lossy(&value)))?;
        let advertise = record["advertise"].as_str().unwrap_or_default().to_owned();
        let replica = (1..=self.opts.netmasters)
            .find(|&i| self.netmaster_advertise(i) == advertise)
            .with_context(|| format!("{key} names no replica of this lab: {record}"))?;
        Ok(Some(NetmasterLeader {
            replica,
            id: record["id"].as_str().unwrap_or_default().to_owned(),
            advertise,
            fence: kv["create_revision"]
                .as_i64()
                .context("kv without create_revision")?,
            lease: kv["lease"].as_i64().unwrap_or_default(),
        }))
    }

    /// Which replica leads, per the leader key in etcd. Right after a leader crashed this
    /// still names it until its lease expires; see [`Lab::wait_netmaster_leader`].
    pub fn netmaster_leader(&self) -> Result<usize> {
        self.netmaster_leader_record()?
            .map(|l| l.replica)
            .context("no netmaster leader: the leader key is absent from etcd")
    }

    /// Polls etcd (every 50 ms) until a leader other than `not` holds the leader key; fails
    /// after `within`.
    pub fn wait_netmaster_leader(
        &self,
        within: Duration,
        not: Option<usize>,
    ) -> Result<NetmasterLeader> {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.netmaster_leader_record()?;
            match &seen {
                Some(l) if Some(l.replica) != not => return Ok(l.clone()),
                _ => {}
            }
            ensure!(
                Instant::now() < deadline,
                "no netmaster leader (other than {not:?}) after {within:?}; last seen: {seen:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Replica `i`'s view of the election: its last election event since its last start.
    pub fn netmaster_role(&self, i: usize) -> ReplicaRole {
        let label = self.netmaster_label(i);
        let log = std::fs::read(self.log_path(&label))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let header = format!("=== {label}: starting");
        let since = log.rfind(&header).map_or(&log[..], |at| &log[at..]);
        role_from_log(since)
    }

    /// Exactly one leader: the leader key names a running replica, that replica logged
    /// "elected leader" with the key's fence as its last election event, and every other
    /// running replica's last event is "following" that leader with that fence. Polls (the
    /// followers log when their watch delivers the key) and fails after `within`.
    pub fn check_one_netmaster_leader(&self, within: Duration) -> Result<NetmasterLeader> {
        let deadline = Instant::now() + within;
        loop {
            let verdict = self.one_leader_now();
            match verdict {
                Ok(leader) => return Ok(leader),
                Err(e) if Instant::now() >= deadline => {
                    return Err(
                        e.context(format!("not exactly one netmaster leader after {within:?}"))
                    )
                }
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn one_leader_now(&self) -> Result<NetmasterLeader> {
        let leader = self
            .netmaster_leader_record()?
            .context("the leader key is absent from etcd")?;
        let running: Vec<usize> = {
            let mut st = self.state();
            st.netmasters
                .iter_mut()
                .filter_map(|(i, d)| d.exited().is_ok_and(|s| s.is_none()).then_some(*i))
                .collect()
        };
        ensure!(
            running.contains(&leader.replica),
            "the leader key names nm{} ({leader:?}), which is not running (running: {running:?})",
            leader.replica
        );
        ensure!(
            leader.id == format!("nm{}", leader.replica),
            "leader record id {:?} at {}",
            leader.id,
            leader.advertise
        );
        let roles: Vec<(usize, ReplicaRole)> = running
            .iter()
            .map(|&i| (i, self.netmaster_role(i)))
            .collect();
        for (i, role) in &roles {
            let expected = if *i == leader.replica {
                ReplicaRole::Leader {
                    fence: leader.fence,
                }
            } else {
                ReplicaRole::Follower {
                    leader: leader.id.clone(),
                    fence: leader.fence,
                }
            };
            ensure!(
                *role == expected,
                "etcd says {leader:?}, but nm{i} logs {role:?} (every replica: {roles:?})"
            );
        }
        Ok(leader)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn election_events_are_read_from_the_log() {
        let log = "\
=== netmaster-nm2: starting `rackline-netmaster …` in netns rl1x0-ctrl
2025-01-01T00:00:00.000001Z  INFO rackline_netmaster::leader::driver: following leader=nm1 advertise=10.254.0.2:7650 fence=7
2025-01-01T00:00:02.000001Z  INFO rackline_netmaster::leader::driver: leader key deleted; campaigning
";
        assert_eq!(role_from_log(log), ReplicaRole::Campaigning);
        let won = format!(
            "{log}2025-01-01T00:00:02.1Z  INFO rackline_netmaster::leader::driver: elected leader id=nm2 fence=41 lease=694 ttl=2s\n"
        );
        assert_eq!(role_from_log(&won), ReplicaRole::Leader { fence: 41 });
        assert_eq!(
            role_from_log(&log.lines().take(2).collect::<Vec<_>>().join("\n")),
            ReplicaRole::Follower {
                leader: "nm1".into(),
                fence: 7
            }
        );
        let lost = format!(
            "{won}2025-01-01T00:00:09Z  WARN rackline_netmaster::leader::driver: leadership lost; campaigning with a fresh lease reason=\"x\" fence=41\n"
        );
        assert_eq!(role_from_log(&lost), ReplicaRole::Campaigning);
        assert_eq!(role_from_log(""), ReplicaRole::Unknown);
    }
}
