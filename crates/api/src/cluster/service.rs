//! The control plane's side of the cluster service ([`paddock_cluster_rpc::ClusterHandler`]):
//! joins are admitted with the cluster's CA and join token; a node that registers is
//! reconciled (it keeps the sandboxes the records expect and kills the rest), then added to
//! the [`NodeSet`] the control plane places on, and its reports feed the [`NodeRegistry`] and
//! placement; proxies learn where a sandbox runs. [`ClusterService::run`] keeps the node set in
//! step with node health: an unhealthy node takes no creates, one silent for
//! [`LOST_AFTER`] is removed and its sandboxes are reported lost, and records no node holds
//! [`LOST_AFTER`] after the control plane started are settled too.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use paddock_cluster::NodeSet;
use paddock_cluster_rpc::{proto, ClusterHandler};
use paddock_cluster_tls::{
    CertRequest, ClusterCa, ExpectedPeer, JoinToken, MemberId, MemberIdentity, PeerIdentity, Role,
};
use paddock_domain::{SandboxId, SandboxState, TemplateName};
use paddock_node_contract::Node;
use paddock_node_grpc::GrpcNode;
use paddock_placement::{Load, Usage};
use tonic::Status;

use super::{
    Allocated, Capacity, DiskUsage, HugePages, MachineInfo, NodeRegistration, NodeRegistry,
    NodeReport, NodeStatus,
};
use crate::ControlPlane;

/// How long a node may stay silent before it is removed and its sandboxes reported lost; also
/// how long after its start the control plane waits for nodes before it settles records that
/// no node holds.
pub const LOST_AFTER: Duration = Duration::from_secs(120);

/// The cluster service of a control plane.
pub struct ClusterService {
    ca: ClusterCa,
    token: JoinToken,
    identity: MemberIdentity,
    control: ControlPlane,
    nodes: NodeSet,
    registry: NodeRegistry,
    cluster_id: String,
    addresses: Arc<Mutex<HashMap<String, SocketAddr>>>,
    started: std::time::Instant,
    lost_after: Duration,
}

impl ClusterService {
    /// A service admitting joins with `token`, issuing from `ca`, calling nodes as `identity`
    /// (the control plane's own certificate) and placing on `nodes`.
    pub fn new(
        ca: ClusterCa,
        token: JoinToken,
        identity: MemberIdentity,
        control: ControlPlane,
        nodes: NodeSet,
        cluster_id: String,
    ) -> Self {
        let registry = control.nodes();
        ClusterService {
            ca,
            token,
            identity,
            control,
            nodes,
            registry,
            cluster_id,
            addresses: Arc::new(Mutex::new(HashMap::new())),
            started: std::time::Instant::now(),
            lost_after: LOST_AFTER,
        }
    }

    /// How long a node may stay silent before it is lost (default [`LOST_AFTER`]).
    pub fn with_lost_after(mut self, after: Duration) -> Self {
        self.lost_after = after;
        self
    }

    /// The node set's status of each member follows the registry; members silent for
    /// [`LOST_AFTER`] leave; after [`LOST_AFTER`] from start, records that no member holds are
    /// reported lost. Runs until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut swept = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            let now = Utc::now();
            for id in self.nodes.member_ids() {
                let Some(info) = self.registry.get(&id) else {
                    self.nodes.remove(&id);
                    continue;
                };
                self.nodes.set_status(&id, info.status);
                let silent = (now - info.last_seen()).to_std().unwrap_or_default();
                if info.status == NodeStatus::Unhealthy && silent >= self.lost_after {
                    tracing::warn!(node = %id, "node lost: its sandboxes are reported lost");
                    self.nodes.remove(&id);
                    let _ = self.registry.mark_gone(&id);
                    self.addresses.lock().expect("addresses lock").remove(&id);
                }
            }
            if !swept && self.started.elapsed() >= self.lost_after {
                swept = true;
                if let Err(e) = self.sweep_unheld().await {
                    tracing::warn!(error = %e, "settling sandboxes no node holds");
                    swept = false;
                }
            }
        }
    }

    /// Reports as lost the running and paused records that no node holds.
    async fn sweep_unheld(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let records = self
            .control
            .store()
            .sandboxes_in_states(&[SandboxState::Running, SandboxState::Paused])
            .await?;
        let mut gone = Vec::new();
        for rec in records {
            if self.nodes.owner_of(&rec.id).is_none() && self.nodes.status(&rec.id).await?.is_none()
            {
                gone.push(rec.id);
            }
        }
        if !gone.is_empty() {
            tracing::warn!(
                count = gone.len(),
                "sandboxes whose node never came back are lost"
            );
            self.nodes.report_gone(&gone);
        }
        Ok(())
    }

    fn address_of(&self, node: &str) -> Option<SocketAddr> {
        self.addresses
            .lock()
            .expect("addresses lock")
            .get(node)
            .copied()
    }
}

fn invalid(what: &str, e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{what}: {e}"))
}

#[async_trait]
impl ClusterHandler for ClusterService {
    async fn join(&self, req: proto::JoinRequest) -> Result<proto::JoinReply, Status> {
        let role: Role = req.role.parse().map_err(|e| invalid("role", e))?;
        if role == Role::Api {
            return Err(Status::permission_denied("only nodes and proxies join"));
        }
        let id = MemberId::new(req.name).map_err(|e| invalid("name", e))?;
        let mut cert = CertRequest::new(PeerIdentity::new(role, id.clone()));
        for name in req.dns_names {
            cert = cert.dns_name(name);
        }
        for ip in req.ip_addresses {
            cert = cert.ip_address(ip.parse::<IpAddr>().map_err(|e| invalid("ip address", e))?);
        }
        match self.ca.admit(&self.token, &req.token, &req.csr_pem, &cert) {
            Ok(grant) => {
                tracing::info!(member = %id.as_str(), %role, "a member joined the cluster");
                Ok(proto::JoinReply {
                    cert_pem: grant.cert_pem,
                    ca_pem: grant.ca_pem,
                })
            }
            Err(paddock_cluster_tls::Error::TokenRefused) => {
                tracing::warn!(member = %id.as_str(), "join refused: wrong token");
                Err(Status::permission_denied("join token refused"))
            }
            Err(e) => Err(invalid("signing request", e)),
        }
    }

    async fn register(
        &self,
        node: &MemberId,
        reg: proto::Registration,
    ) -> Result<proto::Registered, Status> {
        let addr: SocketAddr = reg.advertise.parse().map_err(|e| invalid("advertise", e))?;
        let cap = reg.capacity.unwrap_or_default();
        let capacity = Capacity {
            cpus: cap.cpus,
            memory_mb: cap.memory_mb,
            disk_mb: cap.disk_mb,
            max_sandboxes: cap.max_sandboxes,
        };
        let machine = reg.machine.unwrap_or_default();
        let id = node.as_str().to_string();
        let client = GrpcNode::new(
            addr,
            &self.identity,
            ExpectedPeer::member(PeerIdentity::new(Role::Node, node.clone())),
        )
        .map_err(|e| Status::internal(e.to_string()))?;
        // A node that starts (or comes back) keeps what the records expect and nothing else.
        let expected: Vec<SandboxId> = self
            .control
            .store()
            .sandboxes_in_states(&[SandboxState::Running, SandboxState::Paused])
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .into_iter()
            .map(|r| r.id)
            .collect();
        let kept = client.reconcile(&expected).await.map_err(|e| {
            Status::unavailable(format!("reconciling with the node at {addr}: {e}"))
        })?;
        self.registry
            .register(NodeRegistration {
                id: id.clone(),
                service_instance_id: reg.instance_id,
                cluster_id: self.cluster_id.clone(),
                version: reg.version,
                commit: reg.commit,
                machine_info: MachineInfo {
                    cpu_family: machine.cpu_family,
                    cpu_model: machine.cpu_model,
                    cpu_model_name: machine.cpu_model_name,
                    cpu_architecture: machine.cpu_architecture,
                },
                capacity,
                labels: reg.labels.into_iter().collect::<BTreeMap<_, _>>(),
            })
            .map_err(|e| invalid("registration", e))?;
        self.addresses
            .lock()
            .expect("addresses lock")
            .insert(id.clone(), addr);
        self.nodes.add(&id, Arc::new(client), capacity);
        // What it kept is its own from now on.
        self.nodes.adopt(&id, &kept);
        // `base` from a node that has it (or, the first node, built there): once per cluster.
        let nodes = self.nodes.clone();
        let joined = id.clone();
        tokio::spawn(async move {
            match nodes.provide_base(&joined).await {
                Ok(()) => tracing::info!(node = %joined, "node has the base template"),
                Err(e) => {
                    tracing::warn!(node = %joined, error = %e, "could not provide the base template")
                }
            }
            // What it holds that the catalog does not record yet (made before there was a
            // catalog, or while the control plane was away).
            match nodes.archive_missing(&joined).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(node = %joined, templates = n, "templates archived in the catalog")
                }
                Err(e) => {
                    tracing::warn!(node = %joined, error = %e, "could not archive the node's templates")
                }
            }
        });
        tracing::info!(node = %id, %addr, kept = kept.len(), "node registered");
        Ok(proto::Registered {
            cluster_id: self.cluster_id.clone(),
        })
    }

    async fn report(
        &self,
        node: &MemberId,
        r: proto::NodeReport,
    ) -> Result<proto::ReportAck, Status> {
        let id = node.as_str();
        let status = self
            .registry
            .report(
                id,
                NodeReport {
                    sandbox_count: r.sandbox_count,
                    starting_count: r.starting_count,
                    sandboxes: r.sandboxes,
                    allocated: Allocated {
                        cpus: r.allocated_cpus,
                        memory_mb: r.allocated_memory_mb,
                        disk_mb: r.allocated_disk_mb,
                    },
                    cpu_count: r.cpu_count,
                    cpu_load: r.cpu_load,
                    memory_used_bytes: r.memory_used_bytes,
                    memory_total_bytes: r.memory_total_bytes,
                    disks: vec![DiskUsage {
                        mount_point: r.disk_mount_point,
                        device: r.disk_device,
                        filesystem_type: r.disk_filesystem_type,
                        used_bytes: r.disk_used_bytes,
                        total_bytes: r.disk_total_bytes,
                    }],
                    huge_pages: HugePages {
                        total: r.huge_pages_total,
                        used: r.huge_pages_total.saturating_sub(r.huge_pages_free),
                        reserved: r.huge_pages_reserved,
                        page_size_bytes: r.huge_page_size_bytes,
                    },
                    create_successes: r.create_successes,
                    create_fails: r.create_fails,
                    at: Utc::now(),
                },
            )
            .map_err(|e| Status::not_found(format!("register first: {e}")))?;
        if !self.nodes.has_member(id) {
            return Err(Status::not_found(
                "register first: the control plane does not know this node",
            ));
        }
        self.nodes.set_status(id, status);
        self.nodes.report(
            id,
            Usage {
                cpus: r.allocated_cpus,
                memory_mb: r.allocated_memory_mb,
                disk_mb: r.allocated_disk_mb,
                sandboxes: r.sandbox_count,
            },
            Load {
                cpu: r.cpu_load,
                memory: r.memory_load,
            },
        );
        let warm: Vec<TemplateName> = r
            .warm_templates
            .iter()
            .filter_map(|t| TemplateName::parse(t).ok())
            .collect();
        self.nodes.report_warm(id, &warm);
        Ok(proto::ReportAck {
            status: status.as_str().to_string(),
        })
    }

    async fn watch(&self) -> Result<paddock_cluster_rpc::AnnouncementStream, Status> {
        use proto::location::State;
        let mut started = self.nodes.started();
        let addresses = Arc::clone(&self.addresses);
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let (id, node) = match started.recv().await {
                    Ok(s) => s,
                    // Missed some: the proxy asks for those.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let addr = addresses
                    .lock()
                    .expect("addresses lock")
                    .get(&node)
                    .copied();
                let Some(addr) = addr else { continue };
                let announcement = proto::Announcement {
                    sandbox_id: id.to_string(),
                    location: Some(proto::Location {
                        state: State::Running as i32,
                        node_address: addr.to_string(),
                        node_id: node,
                    }),
                };
                if tx.send(Ok(announcement)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn locate(&self, id: &SandboxId) -> Result<proto::Location, Status> {
        use proto::location::State;
        let not_found = proto::Location {
            state: State::NotFound as i32,
            ..Default::default()
        };
        let Some(rec) = self
            .control
            .store()
            .sandbox(id)
            .await
            .map_err(|e| Status::internal(e.to_string()))?
        else {
            return Ok(not_found);
        };
        let state = match rec.state {
            SandboxState::Running => State::Running,
            SandboxState::Paused => State::Paused,
            _ => return Ok(not_found),
        };
        let owner = match self.nodes.owner_of(id) {
            Some(owner) => Some(owner),
            None => {
                let _ = self.nodes.status(id).await;
                self.nodes.owner_of(id)
            }
        };
        let Some((owner, addr)) = owner.and_then(|o| self.address_of(&o).map(|a| (o, a))) else {
            return Ok(not_found);
        };
        Ok(proto::Location {
            state: state as i32,
            node_address: addr.to_string(),
            node_id: owner,
        })
    }

    async fn wake(&self, id: &SandboxId) -> Result<proto::Location, Status> {
        self.control
            .wake(id)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        self.locate(id).await
    }
}
