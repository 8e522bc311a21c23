//! `redrain`: serve the engine, check a config, or load-test a running engine.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use quota::clock::SystemClock;
use quota::config::Config;
use quota::store::NodeShare;
use redrain::delivery::DeliverySettings;
use redrain::server::{self, Settings};
use redrain::storage;

#[derive(Parser)]
#[command(
    name = "redrain",
    version,
    about = "Red-packet rain: prize draws, quotas and rates, durable wins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine.
    Serve(ServeArgs),
    /// Validate a config file; prints every problem and exits non-zero if there is one.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Drive a running engine over HTTP and check its properties afterwards.
    Load(redrain::load::LoadArgs),
    /// Run a ledger collector: nodes ship their segments to it.
    Collect {
        /// Where the segments are stored (DIR/{node}/).
        #[arg(long, default_value = "./collected")]
        data: PathBuf,
        /// Address to listen on; port 0 picks a free port (printed).
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        /// Shared secret the nodes present [env: REDRAIN_COLLECTOR_SECRET].
        #[arg(long, env = "REDRAIN_COLLECTOR_SECRET", hide_env_values = true)]
        secret: String,
    },
    /// Ledger files: check or print them.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Geo drop tasks.
    Drops {
        #[command(subcommand)]
        command: DropsCommand,
    },
    /// Print an argon2id hash of a password read from standard input (one line), for the
    /// operators file.
    HashPassword,
    /// Run a simulated delivery partner (signature checks, capacity, failures; docs/partners.md).
    PartnerSim(PartnerSimArgs),
    /// Reconcile wins, counters and deliveries from ledgers (a node's data or ledger dir, or a
    /// collector's dir); prints a table (or JSON) and exits non-zero on a mismatch.
    Reconcile {
        /// Ledger, data or collector directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Check every record of every segment; prints counts, the last good sequence number and
    /// the first damage (a torn tail, which start-up cuts, or corruption, which it refuses),
    /// and exits non-zero on damage.
    Verify {
        /// The ledger directory.
        dir: PathBuf,
    },
    /// Print the records as JSON lines (until the first damage).
    Dump {
        /// The ledger directory.
        dir: PathBuf,
        /// Start at this sequence number.
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
}

#[derive(Subcommand)]
enum DropsCommand {
    /// Read, screen and index the drop tasks of a config offline, as a publish would, with a
    /// progress bar; check that every point is found at its own place; report.
    Import {
        /// The TOML config; point and zone files are taken relative to its directory.
        config: PathBuf,
        /// Only this task.
        #[arg(long)]
        task: Option<String>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Campaign config (TOML). Published on a fresh data dir, or when the file changed.
    #[arg(long, default_value = "configs/demo.toml")]
    config: PathBuf,
    /// Data directory (RocksDB lives in DATA/db).
    #[arg(long, default_value = "./data")]
    data: PathBuf,
    /// Address to listen on; port 0 picks a free port (the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Bearer token of the admin API [env: REDRAIN_ADMIN_TOKEN]; a random one is made and
    /// printed if unset.
    #[arg(long, env = "REDRAIN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// This node's index among --node-count nodes (each owns a share of every quota and rate).
    #[arg(long, default_value_t = 0)]
    node_index: u32,
    /// Number of engine nodes sharing the quotas.
    #[arg(long, default_value_t = 1)]
    node_count: u32,
    /// A fixed seed of the draw's randomness, for tests (unset: a random 128-bit key each
    /// start); the same seed, user and request id always roll the same way.
    #[arg(long)]
    seed: Option<u64>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Ship the ledger to the collector at this address (`redrain collect`), every 200 ms.
    #[arg(long)]
    collector: Option<SocketAddr>,
    /// The collector's shared secret [env: REDRAIN_COLLECTOR_SECRET].
    #[arg(long, env = "REDRAIN_COLLECTOR_SECRET", hide_env_values = true)]
    collector_secret: Option<String>,
    /// A partner's signing secret, as PARTNER=SECRET (`*=SECRET` for every partner without
    /// its own); repeat for several, and give one partner two while rotating
    /// [env: REDRAIN_PARTNER_SECRETS, comma-separated]. Without any, the demo secret is used.
    #[arg(
        long = "partner-secret",
        env = "REDRAIN_PARTNER_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    partner_secrets: Vec<String>,
    /// A host partner URLs may point at, besides 127.0.0.1, localhost and [::1]; repeatable.
    #[arg(long = "partner-host")]
    partner_hosts: Vec<String>,
    /// Most deliveries a partner lane keeps in memory; the rest wait in its durable outbox.
    #[arg(long, default_value_t = 2_000_000)]
    max_queued: usize,
    /// Operators of the admin page (name, role, argon2id password hash; docs/admin-api.md).
    /// Without it nobody can log in; the bearer token still works. There is no default: the
    /// demo's operators (configs/operators.toml, passed by scripts/run.sh) have public passwords.
    #[arg(long)]
    operators: Option<PathBuf>,
    /// How often reconciliation runs over this node's ledger (its latest result is served at
    /// /admin/api/reconciliation).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    reconcile_every: Duration,
}

/// Server delivery settings from `serve`'s flags.
fn delivery_settings(args: &ServeArgs) -> anyhow::Result<DeliverySettings> {
    let mut d = DeliverySettings {
        max_queued: args.max_queued.max(1),
        ..DeliverySettings::default()
    };
    d.allowed_hosts.extend(args.partner_hosts.iter().cloned());
    let mut default = Vec::new();
    for entry in &args.partner_secrets {
        let (partner, secret) = entry
            .split_once('=')
            .filter(|(p, s)| !p.is_empty() && s.len() >= 16)
            .ok_or_else(|| {
                anyhow::anyhow!("--partner-secret must be PARTNER=SECRET with a secret of at least 16 characters")
            })?;
        if partner == "*" {
            default.push(secret.to_string());
        } else {
            d.secrets
                .entry(partner.to_string())
                .or_default()
                .push(secret.to_string());
        }
    }
    if args.partner_secrets.is_empty() {
        tracing::warn!("no --partner-secret given; deliveries are signed with the demo secret");
    } else {
        // Secrets were given: the public demo secret signs nothing. A partner without its own
        // secret and without `*=` is refused when its config is published or loaded.
        d.default_secrets = default;
    }
    Ok(d)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::CheckConfig { file } => check_config(&file),
        Command::Load(args) => runtime(None).and_then(|rt| rt.block_on(redrain::load::run(args))),
        Command::Drops {
            command: DropsCommand::Import { config, task },
        } => import_drops(&config, task.as_deref()),
        Command::Collect {
            data,
            listen,
            secret,
        } => collect(data, listen, secret),
        Command::Ledger {
            command: LedgerCommand::Verify { dir },
        } => verify_ledger(&dir),
        Command::Ledger {
            command: LedgerCommand::Dump { dir, from },
        } => dump_ledger(&dir, from),
        Command::PartnerSim(args) => partner_sim(args),
        Command::HashPassword => hash_password(),
        Command::Reconcile { paths, json } => reconcile(&paths, json),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn hash_password() -> anyhow::Result<ExitCode> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.len() < 8 {
        anyhow::bail!("the password must be at least 8 characters");
    }
    println!("{}", redrain::admin::hash_password(password));
    Ok(ExitCode::SUCCESS)
}

fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        b.worker_threads(n);
    }
    Ok(b.enable_all().build()?)
}

fn check_config(file: &PathBuf) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    match Config::from_toml(&text) {
        Ok(c) => {
            let prizes = c.prizes().count();
            println!(
                "{}: ok ({} campaigns, {} rounds, {} drop tasks, {} prizes, {} partners)",
                file.display(),
                c.campaigns.len(),
                c.rounds.len(),
                c.drops.len(),
                prizes,
                c.partners.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            for f in &e.errors {
                println!("{}: {f}", file.display());
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

fn collect(data: PathBuf, listen: SocketAddr, secret: String) -> anyhow::Result<ExitCode> {
    if secret.len() < 16 {
        anyhow::bail!("--secret must be at least 16 characters");
    }
    runtime(None)?.block_on(async {
        let collector = Arc::new(redrain::collect::Collector::new(data.clone(), secret));
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!(
            "redrain collector listening on http://{}",
            listener.local_addr()?
        );
        tracing::info!(data = %data.display(), "collecting ledger segments");
        let routes = redrain::collect::routes(collector);
        server::serve(listener, routes, shutdown_signal(), Duration::from_secs(10)).await;
        Ok(ExitCode::SUCCESS)
    })
}

fn verify_ledger(dir: &Path) -> anyhow::Result<ExitCode> {
    let v = redrain::ledger::verify(dir, |_| {})?;
    let last = v.last_seq.map_or("none".to_string(), |s| s.to_string());
    println!(
        "{}: {} segments, {} records, last good sequence {last}",
        dir.display(),
        v.segments,
        v.records
    );
    Ok(match v.damage {
        None => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Some((file, damage)) if v.torn_tail => {
            // With an intact record after it, the damage's text says which page never landed.
            let why = match damage.intact_after {
                None => "; nothing intact follows, as after a write cut short",
                Some(_) => "",
            };
            println!(
                "torn tail: {} at {damage}{why} (start-up cuts it, unless records RocksDB already applied lie past it)",
                file.display()
            );
            ExitCode::FAILURE
        }
        Some((file, damage)) => {
            println!(
                "corrupt: {} at {damage} (start-up refuses it; the collector's copy may hold \
                 the records)",
                file.display()
            );
            ExitCode::FAILURE
        }
    })
}

fn dump_ledger(dir: &Path, from: u64) -> anyhow::Result<ExitCode> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failed = None;
    let v = redrain::ledger::verify(dir, |r| {
        if r.seq < from || failed.is_some() {
            return;
        }
        let mut line = serde_json::json!({"seq": r.seq, "kind": r.kind});
        let ops = (r.kind == storage::BATCH)
            .then(|| storage::decode_ops(r.payload).ok())
            .flatten();
        match (ops, serde_json::from_slice::<serde_json::Value>(r.payload)) {
            (Some(ops), _) => line["ops"] = ops.iter().map(op_json).collect(),
            (None, Ok(v)) => line["payload"] = v,
            (None, Err(_)) => line["payload_hex"] = hex(r.payload).into(),
        }
        if let Err(e) = writeln!(out, "{line}") {
            failed = Some(e);
        }
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    out.flush()?;
    Ok(match v.damage {
        None => ExitCode::SUCCESS,
        Some((file, damage)) => {
            eprintln!("stopped at damage: {} at {damage}", file.display());
            ExitCode::FAILURE
        }
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// A storage op as JSON: keys as text where they are, values as JSON where they are.
fn op_json(op: &storage::Op) -> serde_json::Value {
    let text = |b: &[u8]| match std::str::from_utf8(b) {
        Ok(t) if !t.contains('\0') => serde_json::Value::from(t),
        _ => serde_json::json!({ "hex": hex(b) }),
    };
    match op {
        storage::Op::Put(cf, k, v) => {
            let value = serde_json::from_slice(v).unwrap_or_else(|_| text(v));
            serde_json::json!({"put": storage::cf_name(*cf), "key": text(k), "value": value})
        }
        storage::Op::Add(cf, k, n) => {
            serde_json::json!({"add": storage::cf_name(*cf), "key": text(k), "by": n})
        }
        storage::Op::Delete(cf, k) => {
            serde_json::json!({"delete": storage::cf_name(*cf), "key": text(k)})
        }
    }
}

fn import_drops(file: &Path, only: Option<&str>) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let config = Config::from_toml(&text).map_err(|e| {
        let list: Vec<String> = e.errors.iter().map(|f| format!("  {f}")).collect();
        anyhow::anyhow!("{} is invalid:\n{}", file.display(), list.join("\n"))
    })?;
    if only.is_some_and(|id| config.drop_task(id).is_none()) {
        anyhow::bail!(
            "{} has no drop task {:?}",
            file.display(),
            only.unwrap_or_default()
        );
    }
    let base = server::config_dir(file);
    let style = ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} ({eta})")?
        .progress_chars("=> ");
    let mut failed = false;
    for (i, task) in config.drops.iter().enumerate() {
        let id = task.round.id.as_str();
        if only.is_some_and(|o| o != id) {
            continue;
        }
        let bar = ProgressBar::new(0).with_style(style.clone());
        bar.enable_steady_tick(Duration::from_millis(100));
        let started = Instant::now();
        let built = redrain::drops::build(&base, task, &format!("drops[{i}]"), &bar);
        let built_in = started.elapsed();
        let live = match built {
            Ok(live) => live,
            Err(e) => {
                bar.finish_and_clear();
                println!("{id}: {e}");
                failed = true;
                continue;
            }
        };
        // Every point must come back from a k = 0 query at its own place (checked on up to
        // 100,000 evenly spaced points).
        let n = live.coords.len();
        let step = n.div_ceil(100_000).max(1);
        bar.set_message("checking the index");
        bar.set_length(n.div_ceil(step) as u64);
        bar.set_position(0);
        let mut out = Vec::new();
        let mut missing = 0usize;
        for drop in (0..n).step_by(step) {
            bar.inc(1);
            let at = live.coords[drop];
            let found = live.index.nearby(at, 0, usize::MAX, &mut out).is_ok()
                && out.iter().any(|f| f.drop as usize == drop);
            missing += usize::from(!found);
        }
        bar.finish_and_clear();
        println!(
            "{id}: {} points read, {} screened out, {n} indexed at resolution {} in {:.2?} \
             ({:.1} bytes/point); {} checked, {missing} not found",
            live.read,
            live.read - n,
            task.resolution,
            built_in,
            live.index.heap_bytes() as f64 / n.max(1) as f64,
            n.div_ceil(step),
        );
        for (zone, count) in &live.screened {
            println!("  zone {zone}: {count} screened out");
        }
        failed |= missing > 0;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let delivery = delivery_settings(&args)?;
    let share = NodeShare::new(args.node_index, args.node_count).ok_or_else(|| {
        anyhow::anyhow!(
            "--node-index must be below --node-count (got {} of {})",
            args.node_index,
            args.node_count
        )
    })?;
    let admin_token = match args.admin_token {
        Some(t) if t.len() >= 16 => t,
        Some(_) => anyhow::bail!("--admin-token must be at least 16 characters"),
        None => {
            let t = format!(
                "{:016x}{:016x}",
                rand::random::<u64>(),
                rand::random::<u64>()
            );
            tracing::warn!("no admin token set; using a random one for this run: {t}");
            t
        }
    };
    let operators = match &args.operators {
        Some(path) => redrain::admin::Operators::load(path)?,
        None => {
            tracing::warn!("no --operators file; nobody can log in to the admin page");
            redrain::admin::Operators::default()
        }
    };
    let settings = Settings {
        operators,
        config_path: args.config,
        data_dir: args.data,
        admin_token,
        share,
        seed: args.seed,
        delivery,
        reconcile_every: args.reconcile_every,
    };
    let rt = runtime(args.threads)?;
    rt.block_on(async {
        let app = Arc::new(tokio::task::block_in_place(|| server::open(&settings, Arc::new(SystemClock)))?);
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        let addr = listener.local_addr()?;
        // Tests and scripts read this line to find a port-0 listener.
        println!("redrain listening on http://{addr}");
        tracing::info!(%addr, data = %settings.data_dir.display(), seq = app.service.snapshot().seq.0, "serving; admin API under /admin/api");
        if let Some(collector) = args.collector {
            let secret = args
                .collector_secret
                .clone()
                .ok_or_else(|| anyhow::anyhow!("--collector needs --collector-secret"))?;
            let shipper = redrain::collect::Shipper::new(
                settings.data_dir.join("ledger"),
                settings.share.index,
                collector,
                secret,
            )
            .durable_before(app.service.storage.durable());
            app.service.metrics.set_ship_lag(shipper.lag_bytes.clone());
            tokio::spawn(redrain::collect::ship_forever(shipper, Duration::from_millis(200)));
        }
        server::run(listener, app, shutdown_signal(), Duration::from_secs(10)).await;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// `partner-sim`'s flags.
#[derive(clap::Args)]
struct PartnerSimArgs {
    /// Address to listen on; port 0 picks a free port (printed).
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// A signing secret to accept; repeat to accept several (a rotation). Without any, the
    /// demo secret is accepted. The environment variable gives one secret.
    #[arg(
        long = "secret",
        env = "REDRAIN_PARTNER_SECRET",
        hide_env_values = true
    )]
    secrets: Vec<String>,
    /// How far a signature's timestamp may be from this clock, in seconds.
    #[arg(long, default_value_t = redrain_delivery::sign::DEFAULT_TOLERANCE_S)]
    tolerance_s: u64,
    /// Declared capacity in requests a second, enforced per 100 ms slot (429 beyond).
    #[arg(long)]
    capacity: Option<u32>,
    /// Latency of every answer: MIN or MIN..MAX (uniform).
    #[arg(long, value_name = "MIN[..MAX]", default_value = "0", value_parser = parse_latency_ms)]
    latency_ms: (u64, u64),
    /// Share of deliveries answered 500.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    fail_rate: f64,
    /// Share of deliveries answered 429 with Retry-After: 1.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    throttle_rate: f64,
    /// Users need an account (POST /accounts/{user}); others get 422 {"code":"no_account"}.
    #[arg(long)]
    require_accounts: bool,
    /// Share of 200s with a non-JSON body (still applied).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    garbage_rate: f64,
    /// Share of 200s with a 16 MiB body (still applied).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    huge_rate: f64,
    /// Share of 200s given only after --slow-ms (still applied).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    slow_rate: f64,
    /// How long a slow answer takes.
    #[arg(long, default_value_t = 30_000)]
    slow_ms: u64,
    /// Seed of the random choices (random if unset).
    #[arg(long)]
    seed: Option<u64>,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err("must be a number within [0, 1]".into()),
    }
}

fn parse_latency_ms(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("{s:?} is not MIN or MIN..MAX in milliseconds with MIN <= MAX");
    let (min, max) = s.split_once("..").unwrap_or((s, s));
    match (min.trim().parse::<u64>(), max.trim().parse::<u64>()) {
        (Ok(min), Ok(max)) if min <= max => Ok((min, max)),
        _ => Err(bad()),
    }
}

fn reconcile(paths: &[PathBuf], json: bool) -> anyhow::Result<ExitCode> {
    let report = redrain::reconcile::reconcile(paths, quota::clock::Clock::now_ms(&SystemClock))
        .map_err(|e| anyhow::anyhow!(e))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", redrain::reconcile::table(&report));
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn partner_sim(args: PartnerSimArgs) -> anyhow::Result<ExitCode> {
    use redrain_delivery::sim::{self, Sim, SimOptions};
    let demo = args.secrets.is_empty();
    let secrets = if demo {
        vec![sim::DEMO_SECRET.to_string()]
    } else {
        args.secrets
    };
    let seed = args.seed.unwrap_or_else(rand::random);
    let opts = SimOptions {
        secrets,
        tolerance_s: args.tolerance_s,
        capacity_per_s: args.capacity,
        latency_min_ms: args.latency_ms.0,
        latency_max_ms: args.latency_ms.1,
        fail_rate: args.fail_rate,
        throttle_rate: args.throttle_rate,
        require_accounts: args.require_accounts,
        garbage_rate: args.garbage_rate,
        huge_rate: args.huge_rate,
        slow_rate: args.slow_rate,
        slow_ms: args.slow_ms,
        seed,
    };
    opts.validate()
        .map_err(|e| anyhow::anyhow!("invalid partner-sim settings: {e}"))?;
    if demo {
        tracing::warn!(
            "no --secret given; accepting the demo secret {:?}",
            sim::DEMO_SECRET
        );
    }
    runtime(None)?.block_on(async {
        let sim = Sim::new(opts);
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        // Tests and scripts read this line to find a port-0 listener.
        println!("partner-sim listening on {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        tracing::info!(seed, capacity = ?args.capacity, "partner-sim serving; POST /deliver");
        sim::serve(listener, sim.clone(), shutdown_signal()).await;
        println!("{}", serde_json::to_string_pretty(&sim.summary())?);
        Ok(ExitCode::SUCCESS)
    })
}
