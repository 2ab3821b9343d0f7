//! The simulated cluster and its workload, drawn once from a seed so that both placers see
//! the same: 1,000 nodes of three sizes, some with warm pools, five that fail every create for
//! a while; 100,000 creates of five sizes and four templates with exponential lifetimes.

use paddock_domain::TemplateName;
use paddock_placement::{Capacity, Demand, NodeView, Request};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Size of the run.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Simulated nodes.
    pub nodes: usize,
    /// Creates placed (one per simulated millisecond).
    pub creates: usize,
    /// Mean sandbox lifetime, in creates (so also the steady number of live sandboxes).
    pub mean_lifetime: f64,
    /// Creates sent and not yet answered at any time.
    pub concurrency: usize,
    /// Seed of everything random.
    pub seed: u64,
}

/// One create of the trace.
#[derive(Debug, Clone)]
pub struct Create {
    /// What is asked.
    pub request: Request,
    /// How many creates later the sandbox is killed.
    pub lifetime: u64,
}

/// The cluster and the trace.
#[derive(Debug)]
pub struct Workload {
    /// The nodes as they join.
    pub nodes: Vec<NodeView>,
    /// For each node, the templates it keeps warm pools of.
    pub pools: Vec<Vec<TemplateName>>,
    /// Nodes that fail every create between `fail_from` and `fail_until` ms.
    pub faulty: Vec<usize>,
    /// Start of the failures, ms.
    pub fail_from: u64,
    /// End of the failures, ms.
    pub fail_until: u64,
    /// The creates, in order.
    pub creates: Vec<Create>,
}

/// (share, vCPUs, memory MiB, disk MiB) of the sandbox sizes.
const SIZES: [(f64, u32, u64, u64); 5] = [
    (0.40, 1, 1024, 2048),
    (0.30, 2, 2048, 5120),
    (0.15, 4, 8192, 10240),
    (0.05, 8, 32768, 20480),
    (0.10, 1, 8192, 5120),
];

/// (share, vCPUs, memory GiB, disk GiB, sandbox limit) of the node sizes.
const NODES: [(f64, u32, u64, u64, u32); 3] = [
    (0.4, 16, 64, 400, 64),
    (0.4, 32, 128, 800, 128),
    (0.2, 64, 256, 1600, 256),
];

fn pick<T: Copy, const N: usize>(rng: &mut StdRng, table: &[T; N], share: impl Fn(&T) -> f64) -> T {
    let mut x: f64 = rng.gen();
    for t in table {
        x -= share(t);
        if x < 0.0 {
            return *t;
        }
    }
    table[N - 1]
}

fn template(name: &str) -> TemplateName {
    TemplateName::parse(name).expect("the simulator's template names are valid")
}

impl Workload {
    /// Draws the cluster and trace of `shape`.
    pub fn draw(shape: &Shape) -> Self {
        let mut rng = StdRng::seed_from_u64(shape.seed);
        let templates = [
            template("base"),
            template("code-interpreter"),
            template("desktop"),
            template("custom"),
        ];
        let mut nodes = Vec::with_capacity(shape.nodes);
        let mut pools = Vec::with_capacity(shape.nodes);
        for i in 0..shape.nodes {
            let (_, cpus, mem_gib, disk_gib, max) = pick(&mut rng, &NODES, |n| n.0);
            nodes.push(NodeView::new(
                format!("n{i}"),
                Capacity {
                    cpus,
                    memory_mb: mem_gib * 1024,
                    disk_mb: disk_gib * 1024,
                    max_sandboxes: max,
                },
            ));
            let mut pool = Vec::new();
            if rng.gen_bool(0.5) {
                pool.push(templates[0].clone());
            }
            if rng.gen_bool(0.1) {
                pool.push(templates[1].clone());
            }
            pools.push(pool);
        }
        let creates = (0..shape.creates)
            .map(|_| {
                let (_, cpus, memory_mb, disk_mb) = pick(&mut rng, &SIZES, |s| s.0);
                let t = pick(&mut rng, &[(0.7, 0), (0.2, 1), (0.05, 2), (0.05, 3)], |t| {
                    t.0
                })
                .1;
                let u: f64 = rng.gen_range(f64::EPSILON..1.0);
                Create {
                    request: Request::new(Demand {
                        cpus,
                        memory_mb,
                        disk_mb,
                    })
                    .with_template(templates[t].clone()),
                    lifetime: (-u.ln() * shape.mean_lifetime).ceil() as u64,
                }
            })
            .collect();
        let faulty = (0..5).map(|k| k * shape.nodes / 5).collect();
        Workload {
            nodes,
            pools,
            faulty,
            fail_from: 20_000,
            fail_until: 45_000,
            creates,
        }
    }
}
