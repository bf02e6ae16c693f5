//! `racklinectl network update NAME [flags]`: only the flags given change.
//! The flags are `network create`'s; a repeatable one adds entries to its
//! list, `--remove-*` removes entries and `--clear-*` empties the list
//! first. The server applies the edit to the version it reads, refuses
//! what would break running pods, and reports the pods that now differ.

use clap::Args;
use rackline_model::qos::Bandwidth;
use rackline_proto::admin::v1 as pb;

use super::qos::{parse_bandwidth, parse_class};
use super::{parse_route, RouteArg};

#[derive(Debug, Clone, Default, Args)]
pub struct UpdateArgs {
    pub name: String,
    /// Immutable: accepted only when equal to the current subnet.
    #[arg(long)]
    pub subnet: Option<String>,
    /// Immutable: accepted only when equal to the current gateway.
    #[arg(long)]
    pub gateway: Option<String>,
    /// The node uplink (refused while pods run on the network).
    #[arg(long)]
    pub master: Option<String>,
    /// 802.1Q id, 0 = untagged (refused while pods run on the network).
    #[arg(long)]
    pub vlan: Option<u32>,
    /// 0 = inherit the master's MTU. New pods get it; running pods are
    /// reported as differing.
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Addresses per node block (refused while the network has blocks).
    #[arg(long = "block-size")]
    pub block_size: Option<u32>,

    /// Add an excluded address, CIDR or FIRST-LAST. Repeatable. Refused when
    /// it covers a leased address, unless --force.
    #[arg(long = "exclude", value_name = "RANGE")]
    pub exclude: Vec<String>,
    /// Remove an exclusion, written as listed by `network show`. Repeatable.
    #[arg(long = "remove-exclude", value_name = "RANGE")]
    pub remove_exclude: Vec<String>,
    /// Empty the exclusion list first.
    #[arg(long = "clear-exclude")]
    pub clear_exclude: bool,

    /// Add a pod route to DST, via GW when written DST@GW (an existing route
    /// to DST gets the new next hop). Repeatable.
    #[arg(long = "route", value_name = "DST[@GW]", value_parser = parse_route)]
    pub routes: Vec<RouteArg>,
    /// Remove the route to DST. Repeatable.
    #[arg(long = "remove-route", value_name = "DST")]
    pub remove_routes: Vec<String>,
    /// Empty the route list first.
    #[arg(long = "clear-routes")]
    pub clear_routes: bool,

    /// Add a CIDR the pod reaches via its node. Repeatable.
    #[arg(long = "host-route", value_name = "CIDR")]
    pub host_routes: Vec<String>,
    /// Remove a host route. Repeatable.
    #[arg(long = "remove-host-route", value_name = "CIDR")]
    pub remove_host_routes: Vec<String>,
    /// Empty the host-route list first.
    #[arg(long = "clear-host-routes")]
    pub clear_host_routes: bool,

    /// Make pods sticky (every pod unless narrowed).
    #[arg(long)]
    pub sticky: bool,
    /// No sticky policy any more (existing reservations and pins stay).
    #[arg(long = "no-sticky", conflicts_with_all = [
        "sticky", "sticky_namespaces", "remove_sticky_namespaces", "clear_sticky_namespaces",
        "sticky_pods", "remove_sticky_pods", "clear_sticky_pods", "sticky_hold_secs",
        "sticky_cross_rack",
    ])]
    pub no_sticky: bool,
    /// Add a sticky namespace. Repeatable; implies --sticky.
    #[arg(long = "sticky-namespace", value_name = "NS")]
    pub sticky_namespaces: Vec<String>,
    #[arg(long = "remove-sticky-namespace", value_name = "NS")]
    pub remove_sticky_namespaces: Vec<String>,
    #[arg(long = "clear-sticky-namespaces")]
    pub clear_sticky_namespaces: bool,
    /// Add a sticky pod-name regex. Repeatable; implies --sticky.
    #[arg(long = "sticky-pod", value_name = "REGEX")]
    pub sticky_pods: Vec<String>,
    #[arg(long = "remove-sticky-pod", value_name = "REGEX")]
    pub remove_sticky_pods: Vec<String>,
    #[arg(long = "clear-sticky-pods")]
    pub clear_sticky_pods: bool,
    /// Seconds a deleted sticky pod's address stays reserved; implies --sticky.
    #[arg(long = "sticky-hold-secs", value_name = "SECS")]
    pub sticky_hold_secs: Option<u64>,
    /// strict or reallocate; implies --sticky.
    #[arg(long = "sticky-cross-rack", value_name = "POLICY")]
    pub sticky_cross_rack: Option<String>,

    /// The network's default pod bandwidth, e.g. ingress=1G,egress=1G.
    #[arg(long = "qos-default", value_name = "BANDWIDTH", value_parser = parse_bandwidth)]
    pub qos_default: Option<Bandwidth>,
    #[arg(long = "clear-qos-default", conflicts_with = "qos_default")]
    pub clear_qos_default: bool,
    /// Cap on every pod's bandwidth.
    #[arg(long = "qos-max", value_name = "BANDWIDTH", value_parser = parse_bandwidth)]
    pub qos_max: Option<Bandwidth>,
    #[arg(long = "clear-qos-max", conflicts_with = "qos_max")]
    pub clear_qos_max: bool,
    /// Set a node class's bandwidth, CLASS:BANDWIDTH. Repeatable.
    #[arg(long = "qos-class", value_name = "CLASS:BANDWIDTH", value_parser = parse_class)]
    pub qos_classes: Vec<(String, Bandwidth)>,
    #[arg(long = "remove-qos-class", value_name = "CLASS")]
    pub remove_qos_classes: Vec<String>,
    #[arg(long = "clear-qos-classes")]
    pub clear_qos_classes: bool,

    /// Turn the duplicate-address probe on (defaults: 3 x 100 ms, 600 s).
    #[arg(long)]
    pub probe: bool,
    /// Turn the probe off.
    #[arg(long = "no-probe", conflicts_with_all = [
        "probe", "probe_count", "probe_interval_ms", "probe_quarantine_secs",
    ])]
    pub no_probe: bool,
    /// Probes per address, 1-10 (implies --probe).
    #[arg(long = "probe-count", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10))]
    pub probe_count: Option<u32>,
    /// Milliseconds between probes, 10-1000 (implies --probe).
    #[arg(long = "probe-interval-ms", value_name = "N", value_parser = clap::value_parser!(u32).range(10..=1000))]
    pub probe_interval_ms: Option<u32>,
    /// Seconds an address found in use stays out of the pool (implies --probe).
    #[arg(long = "probe-quarantine-secs", value_name = "N", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub probe_quarantine_secs: Option<u64>,

    /// Apply even though new exclusions cover leased addresses: those pods
    /// keep running (reported as differing). Needs the admin role.
    #[arg(long)]
    pub force: bool,
    /// Only if the network is still at this revision (`network show`).
    #[arg(long = "expect-revision", value_name = "REV")]
    pub expect_revision: Option<i64>,
    /// Check and report what would change; write nothing.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
}

fn edit(clear: bool, remove: &[String], add: &[String]) -> Option<pb::ListEdit> {
    (clear || !remove.is_empty() || !add.is_empty()).then(|| pb::ListEdit {
        clear,
        remove: remove.to_vec(),
        add: add.to_vec(),
    })
}

impl UpdateArgs {
    // Stays long: one request field per flag group, in proto order; a
    // single linear mapping.
    pub fn to_proto(&self) -> pb::UpdateNetworkRequest {
        let routes = (self.clear_routes
            || !self.remove_routes.is_empty()
            || !self.routes.is_empty())
        .then(|| pb::RouteListEdit {
            clear: self.clear_routes,
            remove: self.remove_routes.clone(),
            add: self
                .routes
                .iter()
                .map(|r| pb::Route {
                    dst: r.dst.clone(),
                    gw: r.gw.clone(),
                })
                .collect(),
        });
        let namespaces = edit(
            self.clear_sticky_namespaces,
            &self.remove_sticky_namespaces,
            &self.sticky_namespaces,
        );
        let pod_patterns = edit(
            self.clear_sticky_pods,
            &self.remove_sticky_pods,
            &self.sticky_pods,
        );
        let sticky = (self.sticky
            || self.no_sticky
            || namespaces.is_some()
            || pod_patterns.is_some()
            || self.sticky_hold_secs.is_some()
            || self.sticky_cross_rack.is_some())
        .then(|| pb::StickyEdit {
            disable: self.no_sticky,
            enable: self.sticky,
            namespaces,
            pod_patterns,
            hold_secs: self.sticky_hold_secs,
            cross_rack: self.sticky_cross_rack.clone().unwrap_or_default(),
        });
        let bw = |b: &Option<Bandwidth>| {
            b.as_ref()
                .map(rackline_admin_client::qos::bandwidth_to_proto)
        };
        let qos = (self.qos_default.is_some()
            || self.clear_qos_default
            || self.qos_max.is_some()
            || self.clear_qos_max
            || !self.qos_classes.is_empty()
            || !self.remove_qos_classes.is_empty()
            || self.clear_qos_classes)
            .then(|| pb::QosEdit {
                set_default: bw(&self.qos_default),
                clear_default: self.clear_qos_default,
                set_max: bw(&self.qos_max),
                clear_max: self.clear_qos_max,
                set_classes: self
                    .qos_classes
                    .iter()
                    .map(|(c, b)| (c.clone(), rackline_admin_client::qos::bandwidth_to_proto(b)))
                    .collect(),
                remove_classes: self.remove_qos_classes.clone(),
                clear_classes: self.clear_qos_classes,
            });
        let probe = (self.probe
            || self.no_probe
            || self.probe_count.is_some()
            || self.probe_interval_ms.is_some()
            || self.probe_quarantine_secs.is_some())
        .then_some(pb::ProbeEdit {
            disable: self.no_probe,
            enable: self.probe,
            count: self.probe_count,
            interval_ms: self.probe_interval_ms,
            quarantine_secs: self.probe_quarantine_secs,
        });
        pb::UpdateNetworkRequest {
            name: self.name.clone(),
            subnet: self.subnet.clone(),
            gateway: self.gateway.clone(),
            master: self.master.clone(),
            vlan: self.vlan,
            mtu: self.mtu,
            block_size: self.block_size,
            exclude: edit(self.clear_exclude, &self.remove_exclude, &self.exclude),
            routes,
            host_routes: edit(
                self.clear_host_routes,
                &self.remove_host_routes,
                &self.host_routes,
            ),
            sticky,
            qos,
            probe,
            force: self.force,
            expect_revision: self.expect_revision.unwrap_or(0),
            dry_run: self.dry_run,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command, NetworkCommand, EXIT_USAGE};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(
            ["racklinectl", "network", "update", "prod"]
                .into_iter()
                .chain(args.iter().copied()),
        )
    }

    #[test]
    fn only_the_flags_given_go_out() {
        let cli = parse(&[
            "--mtu",
            "9000",
            "--exclude",
            "10.0.0.5",
            "--clear-host-routes",
            "--host-route",
            "10.96.0.0/12",
            "--route",
            "192.168.0.0/16@10.0.0.254",
            "--qos-class",
            "small:ingress=10M",
            "--probe-count",
            "5",
        ])
        .unwrap();
        let Command::Network(NetworkCommand::Update(u)) = cli.command else {
            panic!("not an update");
        };
        let r = u.to_proto();
        assert_eq!(r.name, "prod");
        assert_eq!(r.mtu, Some(9000));
        assert_eq!((r.vlan, r.subnet, r.block_size), (None, None, None));
        let ex = r.exclude.unwrap();
        assert_eq!((ex.clear, ex.add), (false, vec!["10.0.0.5".to_string()]));
        let hr = r.host_routes.unwrap();
        assert!(hr.clear && hr.add == ["10.96.0.0/12"]);
        assert_eq!(r.routes.unwrap().add[0].gw, "10.0.0.254");
        assert!(r.sticky.is_none());
        let q = r.qos.unwrap();
        assert!(q.set_default.is_none() && q.set_classes.contains_key("small"));
        let p = r.probe.unwrap();
        assert_eq!((p.enable, p.count), (false, Some(5)));
        assert!(!r.force && !r.dry_run && r.expect_revision == 0);
    }

    #[test]
    fn contradictory_flags_are_usage_errors() {
        for bad in [
            &["--no-sticky", "--sticky-namespace", "db"][..],
            &["--no-probe", "--probe-count", "2"][..],
            &["--qos-default", "egress=1M", "--clear-qos-default"][..],
            &["--route", "@10.0.0.1"][..],
            &["--probe-count", "0"][..],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), i32::from(EXIT_USAGE), "{bad:?}");
        }
    }
}
