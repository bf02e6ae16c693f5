//! Generated gRPC types. One crate, versioned packages: a breaking change gets
//! a new `vN` package beside the old one so mixed-version nodes keep working
//! during a rolling upgrade.

pub mod ipam {
    pub mod v1 {
        tonic::include_proto!("rackline.ipam.v1");
    }
}

pub mod admin {
    pub mod v1 {
        tonic::include_proto!("rackline.admin.v1");
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
