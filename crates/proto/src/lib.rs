//! Generated gRPC types. One crate, versioned packages: a breaking change gets
//! a new `vN` package beside the old one so mixed-version nodes keep working
//! during a rolling upgrade.

/// Messages both APIs carry (pod reference, route, bandwidth, ARP probe).
/// Re-exported under their old names inside `ipam::v1` and `admin::v1`, so a
/// value read from one API passes to the other without conversion.
pub mod common {
    pub mod v1 {
        tonic::include_proto!("rackline.common.v1");
    }
}

pub mod ipam {
    pub mod v1 {
        tonic::include_proto!("rackline.ipam.v1");
        pub use crate::common::v1::Probe as ProbeConfig;
        pub use crate::common::v1::{Bandwidth, PodRef, Route};
    }
}

pub mod admin {
    pub mod v1 {
        tonic::include_proto!("rackline.admin.v1");
        pub use crate::common::v1::{Bandwidth, PodRef, Probe, Route};
    }
}

/// The part of the Kubernetes CRI runtime API ipamd's leak reconciler uses
/// (`RuntimeService.ListPodSandbox`), vendored from k8s.io/cri-api
/// (Apache-2.0).
pub mod cri {
    pub mod v1 {
        tonic::include_proto!("runtime.v1");
    }
}

pub mod reason;

#[cfg(test)]
mod wire_tests;
