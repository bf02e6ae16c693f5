//! A fake rackline-ipamd on a unix socket, for tests that drive the whole
//! plugin in-process: the unit tests of `run_with` and the integration
//! tests of `run` (through the `test-support` feature). It records what the
//! plugin asks and answers with one fixed lease, or refuses every Allocate.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rackline_proto::ipam::v1 as pb;

/// What the fake ipamd was asked, in order.
#[derive(Debug, Default)]
pub struct Seen {
    pub allocate: Vec<pb::AllocateRequest>,
    pub release: Vec<pb::ReleaseRequest>,
}

/// How the fake answers Allocate and Check.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Allocate is refused as exhausted (code 101 at the plugin), Check as
    /// not found: the plugin stops before its datapath.
    Refuse,
    /// Allocate and Check answer this lease on this network.
    Lease(Box<(pb::Lease, pb::NetworkConfig)>),
}

impl Answer {
    /// 10.0.0.5/24, gateway 10.0.0.1, on the master `uplink`.
    pub fn lease() -> Self {
        Answer::Lease(Box::new((
            pb::Lease {
                address: "10.0.0.5/24".into(),
                ..Default::default()
            },
            pb::NetworkConfig {
                gateway: "10.0.0.1".into(),
                master: "uplink".into(),
                ..Default::default()
            },
        )))
    }
}

struct FakeIpamd {
    seen: Arc<Mutex<Seen>>,
    answer: Answer,
}

type Reply<T> = Result<tonic::Response<T>, tonic::Status>;

#[tonic::async_trait]
impl pb::ipam_server::Ipam for FakeIpamd {
    async fn allocate(&self, r: tonic::Request<pb::AllocateRequest>) -> Reply<pb::AllocateReply> {
        self.seen.lock().unwrap().allocate.push(r.into_inner());
        match &self.answer {
            Answer::Refuse => Err(tonic::Status::resource_exhausted("fake: no address")),
            Answer::Lease(l) => Ok(tonic::Response::new(pb::AllocateReply {
                lease: Some(l.0.clone()),
                network: Some(l.1.clone()),
                ..Default::default()
            })),
        }
    }
    async fn release(&self, r: tonic::Request<pb::ReleaseRequest>) -> Reply<pb::ReleaseReply> {
        self.seen.lock().unwrap().release.push(r.into_inner());
        Ok(tonic::Response::new(pb::ReleaseReply::default()))
    }
    async fn check(&self, _: tonic::Request<pb::CheckRequest>) -> Reply<pb::CheckReply> {
        match &self.answer {
            Answer::Refuse => Err(tonic::Status::not_found("fake")),
            Answer::Lease(l) => Ok(tonic::Response::new(pb::CheckReply {
                lease: Some(l.0.clone()),
                network: Some(l.1.clone()),
                ..Default::default()
            })),
        }
    }
    async fn gc(&self, _: tonic::Request<pb::GcRequest>) -> Reply<pb::GcReply> {
        Ok(tonic::Response::new(pb::GcReply::default()))
    }
    async fn status(&self, _: tonic::Request<pb::StatusRequest>) -> Reply<pb::StatusReply> {
        Ok(tonic::Response::new(pb::StatusReply {
            can_allocate: true,
            ..Default::default()
        }))
    }
    async fn report_conflict(
        &self,
        _: tonic::Request<pb::ConflictRequest>,
    ) -> Reply<pb::ConflictReply> {
        Ok(tonic::Response::new(pb::ConflictReply::default()))
    }
}

/// Serves the fake on `socket` from a background thread. With no `delay`
/// the socket is bound before this returns (a client may dial at once);
/// otherwise it appears after `delay` (an ipamd restarting).
pub fn serve(socket: PathBuf, delay: Duration, answer: Answer) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let svc = FakeIpamd {
        seen: seen.clone(),
        answer,
    };
    let bound = delay.is_zero().then(|| {
        let l = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        l.set_nonblocking(true).unwrap();
        l
    });
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = match bound {
                Some(l) => tokio::net::UnixListener::from_std(l).unwrap(),
                None => {
                    tokio::time::sleep(delay).await;
                    tokio::net::UnixListener::bind(&socket).unwrap()
                }
            };
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(l);
            tonic::transport::Server::builder()
                .add_service(pb::ipam_server::IpamServer::new(svc))
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
    });
    seen
}
