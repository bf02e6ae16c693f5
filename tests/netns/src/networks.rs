//! Which Rackline networks a lab creates and which one each node's netconf names: the one
//! place that maps racks to networks.
//!
//! By default ([`DEFAULT_NETWORK_MODE`]) a multi-rack lab gets one network per rack, each with
//! one subnet and one gateway ([`LabNetworkMode::PerRack`]); with
//! `.network_mode(LabNetworkMode::Spanning)` a single network spans every rack through RackNet
//! bindings and rack-aware ipamds ([`LabNetworkMode::Spanning`]).

use std::net::Ipv4Addr;

use anyhow::{Context, Result};

use crate::cni::Cidr4;
use crate::lab::Lab;
use crate::topology::{
    rack_exclude, rack_gateway, rack_pool, rack_subnet, NETWORK, SERVICE_CIDR, UPLINK,
};

/// How racks map to Rackline networks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabNetworkMode {
    /// One network per rack: rack r's /24, gateway = its TOR, `.2`–`.63` excluded. Named
    /// `rack<r>`; a one-rack lab keeps the historical name `prod`.
    PerRack,
    /// One network `prod` spanning every rack (a RackNet per rack with the rack's subnet and
    /// gateway); ipamd is started with `--rack` and `--netmaster`.
    Spanning,
}

/// The mode every lab uses unless its builder says otherwise (`LabBuilder::network_mode`).
pub const DEFAULT_NETWORK_MODE: LabNetworkMode = LabNetworkMode::PerRack;

/// A network the lab creates: its name and the racks that use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabNetwork {
    pub name: String,
    /// The racks whose nodes' default netconf names this network, in rack order.
    pub racks: Vec<RackShare>,
}

/// A rack's part of a [`LabNetwork`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RackShare {
    /// 1-based rack index.
    pub rack: usize,
    pub subnet: Cidr4,
    pub gateway: Ipv4Addr,
    /// First and last allocatable address.
    pub pool: (Ipv4Addr, Ipv4Addr),
}

impl LabNetwork {
    /// Whether `addr` is in rack `r`'s pool on this network.
    pub fn in_pool_of_rack(&self, r: usize, addr: Ipv4Addr) -> bool {
        self.racks
            .iter()
            .any(|s| s.rack == r && (s.pool.0..=s.pool.1).contains(&addr))
    }
}

impl Lab {
    pub fn network_mode(&self) -> LabNetworkMode {
        self.opts.network_mode
    }

    /// The network rack `r`'s nodes attach pods to (and their default netconf names).
    pub fn network_of_rack(&self, r: usize) -> String {
        let _ = self.rack(r);
        match self.opts.network_mode {
            LabNetworkMode::PerRack if self.racks().len() == 1 => NETWORK.to_owned(),
            LabNetworkMode::PerRack => self.rack(r).name().to_owned(),
            LabNetworkMode::Spanning => NETWORK.to_owned(),
        }
    }

    /// The network node `k`'s default netconf names.
    pub fn network_of_node(&self, k: usize) -> String {
        self.network_of_rack(self.node(k).rack())
    }

    /// Every network the lab creates (in creation order).
    pub fn networks(&self) -> Vec<LabNetwork> {
        let mut out: Vec<LabNetwork> = Vec::new();
        for rack in self.racks() {
            let r = rack.index();
            let name = self.network_of_rack(r);
            let share = RackShare {
                rack: r,
                subnet: rack_subnet(r),
                gateway: rack_gateway(r),
                pool: match self.opts.network_mode {
                    LabNetworkMode::Spanning => self.spanning_range(r),
                    LabNetworkMode::PerRack => rack_pool(r),
                },
            };
            match out.iter_mut().find(|n| n.name == name) {
                Some(net) => net.racks.push(share),
                None => out.push(LabNetwork {
                    name,
                    racks: vec![share],
                }),
            }
        }
        out
    }

    pub(crate) fn create_networks(&self) -> Result<()> {
        match self.opts.network_mode {
            LabNetworkMode::PerRack => {
                for net in self.networks() {
                    let r = net.racks[0].rack;
                    self.racklinectl(
                        &[
                            "network",
                            "create",
                            &net.name,
                            "--subnet",
                            &rack_subnet(r).to_string(),
                            "--gateway",
                            &rack_gateway(r).to_string(),
                            "--master",
                            UPLINK,
                            "--exclude",
                            &rack_exclude(r),
                            "--host-route",
                            SERVICE_CIDR,
                        ]
                        .into_iter()
                        .chain(self.opts.network_args.iter().map(String::as_str))
                        .collect::<Vec<_>>(),
                    )
                    .with_context(|| format!("creating network {}", net.name))?;
                }
                Ok(())
            }
            LabNetworkMode::Spanning => {
                // One network; its own subnet/gateway are rack 1's (a binding's subnet
                // must equal the network's or not overlap it), every rack bound with its
                // own subnet, gateway and range.
                self.racklinectl(
                    &[
                        "network",
                        "create",
                        NETWORK,
                        "--subnet",
                        &rack_subnet(1).to_string(),
                        "--gateway",
                        &rack_gateway(1).to_string(),
                        "--master",
                        UPLINK,
                        "--exclude",
                        &rack_exclude(1),
                        "--host-route",
                        SERVICE_CIDR,
                        "--block-size",
                        &self.opts.block_size.to_string(),
                    ]
                    .into_iter()
                    .chain(self.opts.network_args.iter().map(String::as_str))
                    .collect::<Vec<_>>(),
                )
                .context("creating the spanning network")?;
                for rack in self.racks() {
                    let r = rack.index();
                    let (first, last) = self.spanning_range(r);
                    self.racklinectl(&["rack", "create", rack.name()])
                        .with_context(|| format!("creating rack {}", rack.name()))?;
                    self.racklinectl(&[
                        "rack",
                        "bind",
                        rack.name(),
                        NETWORK,
                        "--subnet",
                        &rack_subnet(r).to_string(),
                        "--gateway",
                        &rack_gateway(r).to_string(),
                        "--range",
                        &format!("{first}-{last}"),
                    ])
                    .with_context(|| format!("binding rack {} to {NETWORK}", rack.name()))?;
                }
                Ok(())
            }
        }
    }

    /// Rack `r`'s allocatable range in Spanning mode.
    pub fn spanning_range(&self, r: usize) -> (Ipv4Addr, Ipv4Addr) {
        let (first, last) = rack_pool(r);
        match self.opts.rack_range_len {
            Some(n) if n > 0 => {
                let o = first.octets();
                let end = (u32::from(o[3]) + u32::from(n) - 1).min(254) as u8;
                (first, Ipv4Addr::new(o[0], o[1], o[2], end))
            }
            _ => (first, last),
        }
    }

    /// Extra ipamd flags of node `k` in this mode.
    pub(crate) fn ipamd_rack_args(&self, k: usize) -> Vec<String> {
        match self.opts.network_mode {
            LabNetworkMode::PerRack => Vec::new(),
            LabNetworkMode::Spanning => vec![
                "--rack".into(),
                self.rack(self.node(k).rack()).name().to_owned(),
                "--netmaster".into(),
                self.netmaster_urls(),
            ],
        }
    }
}
