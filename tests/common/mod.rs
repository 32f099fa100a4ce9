//! Helpers for integration tests against the real backends started by scripts/backends.sh:
//! unique names per test, the `herald` binary as a child process, Kafka offsets, MongoDB users
//! and the dead-letter topic.
#![allow(dead_code)]

pub mod aliases;
pub mod oracle;
pub mod proxy;
pub mod rabbit;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use herald::domain::user::{EventStats, UserProfile};
use herald::workload::{MessageKind, Workload, WorkloadSpec};
use mongodb::bson::{Bson, Document};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

pub const BROKERS: &str = "127.0.0.1:9092";
pub const MONGO: &str = "mongodb://127.0.0.1:27017";
pub const REDIS: &str = "redis://127.0.0.1:6379/0";
/// The 3-primary Redis Cluster of scripts/backends.sh.
pub const REDIS_CLUSTER: &str =
    "redis://127.0.0.1:7101,redis://127.0.0.1:7102,redis://127.0.0.1:7103";

/// Whether the suite runs Herald on the Redis Cluster (`HERALD_TEST_REDIS=cluster`) rather than
/// on one Redis.
pub fn on_redis_cluster() -> bool {
    std::env::var("HERALD_TEST_REDIS").is_ok_and(|v| v == "cluster")
}

/// A blocking connection to one Redis or to the cluster (each command routed to its slot).
pub enum SyncRedis {
    One(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl redis::ConnectionLike for SyncRedis {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<redis::Value> {
        match self {
            SyncRedis::One(c) => c.req_packed_command(cmd),
            SyncRedis::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        match self {
            SyncRedis::One(c) => c.req_packed_commands(cmd, offset, count),
            SyncRedis::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }
    fn req_command(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        match self {
            SyncRedis::One(c) => c.req_command(cmd),
            SyncRedis::Cluster(c) => c.req_command(cmd),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            SyncRedis::One(c) => c.get_db(),
            SyncRedis::Cluster(c) => c.get_db(),
        }
    }
    fn check_connection(&mut self) -> bool {
        match self {
            SyncRedis::One(c) => c.check_connection(),
            SyncRedis::Cluster(c) => c.check_connection(),
        }
    }
    fn is_open(&self) -> bool {
        match self {
            SyncRedis::One(c) => c.is_open(),
            SyncRedis::Cluster(c) => c.is_open(),
        }
    }
}

pub fn cluster_aware_connection(
    target: &herald::adapters::redis::connection::RedisTarget,
) -> SyncRedis {
    use herald::adapters::redis::connection::RedisTarget;
    match target {
        RedisTarget::Single { url, .. } => SyncRedis::One(
            redis::Client::open(url.as_str())
                .unwrap()
                .get_connection()
                .unwrap(),
        ),
        RedisTarget::Cluster { nodes } => SyncRedis::Cluster(Box::new(
            redis::cluster::ClusterClient::new(nodes.iter().map(String::as_str))
                .unwrap()
                .get_connection()
                .unwrap(),
        )),
    }
}

/// Which source a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bus {
    Kafka,
    Rabbit,
}

/// Names for one test: topic (or exchange), group, database and Redis prefix (letters, digits,
/// `_`); `partitions` is the number of Kafka partitions or RabbitMQ queues.
#[derive(Clone, Debug)]
pub struct Names {
    pub base: String,
    pub partitions: i32,
    pub mongo: String,
    pub redis: String,
    pub bus: Bus,
}

impl Names {
    pub fn new(test: &str, partitions: i32) -> Names {
        Names::on(Bus::Kafka, test, partitions)
    }

    pub fn on(bus: Bus, test: &str, partitions: i32) -> Names {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let tag = match bus {
            Bus::Kafka => "k",
            Bus::Rabbit => "r",
        };
        Names {
            base: format!(
                "it_{test}_{tag}_{}_{}",
                std::process::id(),
                nanos % 1_000_000_000
            ),
            partitions,
            mongo: MONGO.to_string(),
            redis: REDIS.to_string(),
            bus,
        }
    }
    pub fn topic(&self) -> String {
        self.base.clone()
    }
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("HERALD__KAFKA__BROKERS".into(), BROKERS.into()),
            ("HERALD__KAFKA__TOPIC".into(), self.base.clone()),
            ("HERALD__KAFKA__GROUP_ID".into(), self.base.clone()),
            (
                "HERALD__KAFKA__PARTITIONS".into(),
                self.partitions.to_string(),
            ),
            ("HERALD__MONGO__URL".into(), self.mongo.clone()),
            ("HERALD__MONGO__DATABASE".into(), self.base.clone()),
            ("HERALD__REDIS__URL".into(), self.redis.clone()),
            (
                "HERALD__REDIS__CLUSTER_NODES".into(),
                // A test that runs its own Redis (a private one to stop or flush) keeps it.
                if on_redis_cluster() && self.redis == REDIS {
                    REDIS_CLUSTER.into()
                } else {
                    String::new()
                },
            ),
            ("HERALD__REDIS__PREFIX".into(), format!("{}:", self.base)),
            ("HERALD__PIPELINE__COMMIT_INTERVAL_MS".into(), "200".into()),
            ("HERALD__LOG__FORMAT".into(), "json".into()),
            // Tests run in parallel: each instance takes an ephemeral HTTP port unless the
            // test names one.
            ("HERALD__HTTP__LISTEN".into(), "127.0.0.1:0".into()),
            (
                "HERALD__SOURCE__KIND".into(),
                match self.bus {
                    Bus::Kafka => "kafka",
                    Bus::Rabbit => "rabbitmq",
                }
                .into(),
            ),
            ("HERALD__RABBITMQ__URL".into(), rabbit::AMQP.into()),
            ("HERALD__RABBITMQ__EXCHANGE".into(), self.base.clone()),
            (
                "HERALD__RABBITMQ__QUEUES".into(),
                self.partitions.to_string(),
            ),
        ]
    }
}

pub fn herald_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_herald"))
}

pub fn log_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("it-logs");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Publishes the deterministic workload (the same one [`expected`] replays), keyed by user, the
/// way an application's producer would: librdkafka's defaults (batches with `linger.ms`,
/// compression allowed, idempotent), so a consumer's commit routinely falls inside a batch.
/// On RabbitMQ: published through the consistent-hash exchange with publisher confirms.
pub fn produce(names: &Names, events: u64, users: u64, seed: u64) {
    produce_part(names, events, users, seed, 0..events as usize);
}

/// Publishes the messages `part` of the workload (in order), as [`produce`] does: a test can
/// publish the rest of the same workload later and still compare with [`expected`].
pub fn produce_part(
    names: &Names,
    events: u64,
    users: u64,
    seed: u64,
    part: std::ops::Range<usize>,
) {
    let records = Workload::new(WorkloadSpec::new(events, users, seed))
        .skip(part.start)
        .take(part.len())
        .map(|m| (m.key, m.payload));
    match names.bus {
        Bus::Kafka => produce_kafka(names, records),
        Bus::Rabbit => rabbit::Amqp::connect(names).publish(records),
    }
}

/// Watches a test's source from the outside, whichever it is.
pub struct Observer {
    names: Names,
    produced: i64,
    kafka: Option<BaseConsumer>,
    amqp: Option<rabbit::Amqp>,
}

impl Observer {
    /// `produced`: how many messages the test published.
    pub fn new(names: &Names, produced: u64) -> Observer {
        let (kafka, amqp) = match names.bus {
            Bus::Kafka => (Some(offsets_client(names)), None),
            Bus::Rabbit => (None, Some(rabbit::Amqp::connect(names))),
        };
        Observer {
            names: names.clone(),
            produced: produced as i64,
            kafka,
            amqp,
        }
    }

    /// The test published `n` more messages.
    pub fn published(&mut self, n: u64) {
        self.produced += n as i64;
    }

    /// A fresh AMQP connection (after a broker restart closed the old one).
    pub fn reconnect(&mut self) {
        if self.amqp.is_some() {
            self.amqp = Some(rabbit::Amqp::connect(&self.names));
        }
    }

    pub fn amqp(&self) -> &rabbit::Amqp {
        self.amqp.as_ref().expect("a RabbitMQ test")
    }

    /// A number that grows as Herald works through the input: the committed offsets (Kafka),
    /// the messages no longer ready in the queues (RabbitMQ: delivered, acked or not).
    pub fn progress(&self) -> i64 {
        match (&self.kafka, &self.amqp) {
            (Some(client), _) => committed(client, &self.names).iter().sum(),
            (_, Some(amqp)) => self.produced - amqp.ready_total() as i64,
            _ => unreachable!(),
        }
    }

    /// Waits until `progress()` passes `beyond` (or `limit` passes: the caller goes on).
    pub fn wait_progress(&self, beyond: i64, limit: Duration) {
        let started = Instant::now();
        while self.progress() <= beyond && started.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until everything published was consumed and committed (acked).
    pub fn wait_done(&self, limit: Duration) {
        match self.names.bus {
            Bus::Kafka => wait_fully_committed(&self.names, limit),
            Bus::Rabbit => self.amqp().wait_drained(limit),
        }
    }

    /// The dead-letter destination's messages: (payload, herald-error).
    pub fn dead_letters(&self) -> Vec<(Vec<u8>, String)> {
        match self.names.bus {
            Bus::Kafka => dead_letters(&self.names),
            Bus::Rabbit => self.amqp().dead_letters(),
        }
    }
}

impl Drop for Observer {
    /// Deletes the test's topics (queues) once it passed; a failed test keeps them to look at.
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        if let Some(amqp) = &self.amqp {
            amqp.delete_topology();
        }
        if self.kafka.is_some() {
            delete_topics(&self.names);
        }
    }
}

fn delete_topics(names: &Names) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .create()
        .unwrap();
    let dlq = format!("{}.dlq", names.base);
    let topics = [names.topic(), dlq];
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    match block_on(admin.delete_topics(&topics, &opts)) {
        Ok(results) => {
            for (topic, code) in results.into_iter().filter_map(Result::err) {
                eprintln!("could not delete test topic {topic}: {code}");
            }
        }
        Err(e) => eprintln!("could not delete the test topics: {e}"),
    }
}

/// Creates the test's topics (Herald creates them with the right partition count when it
/// starts; the broker's auto-creation is off) and publishes `(key, payload)` in order, with
/// librdkafka's default batching and LZ4 compression, `acks=all`, idempotent.
pub fn produce_kafka<K: AsRef<[u8]>, P: AsRef<[u8]>>(
    names: &Names,
    records: impl IntoIterator<Item = (K, P)>,
) {
    produce_kafka_to(names, records.into_iter().map(|(k, p)| (None, k, p)));
}

/// [`produce_kafka`] with an optional partition per record (else the key's partition).
fn produce_kafka_to<K: AsRef<[u8]>, P: AsRef<[u8]>>(
    names: &Names,
    records: impl IntoIterator<Item = (Option<i32>, K, P)>,
) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    block_on(herald::adapters::kafka::source::ensure_topics(
        BROKERS,
        &[],
        &[
            (&names.base, names.partitions),
            (&format!("{}.dlq", names.base), 1),
        ],
        Duration::from_secs(10),
    ))
    .unwrap();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    for (partition, key, payload) in records {
        let mut record = BaseRecord::<[u8], [u8]>::to(&names.base)
            .key(key.as_ref())
            .payload(payload.as_ref());
        if let Some(p) = partition {
            record = record.partition(p);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120)).unwrap();
}

/// A running `herald run`; killed if the test panics first.
pub struct Herald(pub Child);

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Herald {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Herald {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// Starts `herald run` with the test's names plus `extra` environment.
pub fn spawn_herald(names: &Names, extra: &[(&str, &str)], tag: &str) -> Herald {
    let log = std::fs::File::create(log_dir().join(format!("{}-{tag}.log", names.base))).unwrap();
    Command::new(herald_bin())
        .arg("run")
        .envs(names.env())
        .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(Herald)
        .expect("spawn herald run")
}

/// Waits until the log of the `herald` started with `tag` says it is running.
pub fn wait_running(names: &Names, tag: &str) {
    let log = log_dir().join(format!("{}-{tag}.log", names.base));
    let since = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("herald running")
    {
        assert!(
            since.elapsed() < Duration::from_secs(90),
            "{tag} never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGTERM and wait; returns the exit status and how long it took.
pub fn sigterm(child: &mut Child, limit: Duration) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    unsafe_sigterm(child.id());
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, started.elapsed());
        }
        assert!(
            started.elapsed() < limit,
            "herald did not exit within {limit:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn unsafe_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

/// A consumer handle (not subscribed) to read the group's committed offsets and watermarks.
pub fn offsets_client(names: &Names) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", names.base.as_str())
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

pub fn committed(client: &BaseConsumer, names: &Names) -> Vec<i64> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..names.partitions {
        tpl.add_partition(&names.topic(), p);
    }
    // The group coordinator may be moving or loading (NotCoordinator, CoordinatorLoadInProgress):
    // the client finds it again; ask again for a while.
    let started = Instant::now();
    let c = loop {
        match client.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(c) => break c,
            Err(e) if started.elapsed() < Duration::from_secs(30) => {
                eprintln!("reading committed offsets: {e}; asking again");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("reading committed offsets: {e}"),
        }
    };
    (0..names.partitions)
        .map(
            |p| match c.find_partition(&names.topic(), p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            },
        )
        .collect()
}

/// The end offset of every partition. A topic Herald has only just created may have no leader
/// for a moment: that error is asked again, for up to 30 s.
pub fn end_offsets(client: &BaseConsumer, names: &Names) -> Vec<i64> {
    let started = Instant::now();
    (0..names.partitions)
        .map(|p| loop {
            match client.fetch_watermarks(&names.topic(), p, Duration::from_secs(10)) {
                Ok((_, high)) => break high,
                Err(e) if started.elapsed() < Duration::from_secs(30) => {
                    eprintln!("end offset of partition {p}: {e}; asking again");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("end offset of partition {p}: {e}"),
            }
        })
        .collect()
}

/// Waits until the group committed the end of every partition.
pub fn wait_fully_committed(names: &Names, limit: Duration) {
    let client = offsets_client(names);
    let end = end_offsets(&client, names);
    let started = Instant::now();
    loop {
        let c = committed(&client, names);
        if c.iter().zip(&end).all(|(c, e)| c >= e) {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "not fully committed after {limit:?}: {c:?} of {end:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The workload's messages and the sequential replay of its valid ones.
pub struct Expected {
    pub users: BTreeMap<String, UserProfile>,
    pub invalid: BTreeSet<Vec<u8>>,
}

pub fn expected(events: u64, users: u64, seed: u64) -> Expected {
    expected_of(WorkloadSpec::new(events, users, seed))
}

/// [`expected`] of any workload spec (with visitors: merged ids left out of `users`).
pub fn expected_of(spec: WorkloadSpec) -> Expected {
    let msgs: Vec<_> = Workload::new(spec).collect();
    // The workload generator knows which messages it made invalid; the reference model
    // (tests/common/oracle.rs) replays the others without Herald's decoder or state machine.
    Expected {
        users: oracle::replay(
            msgs.iter()
                .filter(|m| m.kind != MessageKind::Invalid)
                .map(|m| &m.payload[..]),
        ),
        invalid: msgs
            .iter()
            .filter(|m| m.kind == MessageKind::Invalid)
            .map(|m| m.payload.to_vec())
            .collect(),
    }
}

fn ms(b: Option<&Bson>) -> Option<i64> {
    match b? {
        Bson::DateTime(d) => Some(d.timestamp_millis()),
        _ => None,
    }
}

pub fn int(b: Option<&Bson>) -> i64 {
    match b {
        Some(Bson::Int32(i)) => *i as i64,
        Some(Bson::Int64(i)) => *i,
        Some(Bson::Double(f)) => *f as i64,
        _ => 0,
    }
}

async fn user_documents(names: &Names) -> Vec<Document> {
    let client = mongodb::Client::with_uri_str(&names.mongo).await.unwrap();
    client
        .database(&names.base)
        .collection::<Document>("users")
        .find(mongodb::bson::doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

/// The merged ids of the `users` collection (`{_id, merged_into}`), with their `merged_into`.
pub async fn mongo_merged(names: &Names) -> BTreeMap<String, String> {
    user_documents(names)
        .await
        .into_iter()
        .filter_map(|d| {
            let into = d.get_str("merged_into").ok()?.to_string();
            let fields: BTreeSet<&str> = d
                .keys()
                .map(String::as_str)
                .filter(|k| !k.starts_with('_'))
                .collect();
            assert_eq!(
                fields,
                BTreeSet::from(["merged_into"]),
                "a merged id's document is {{_id, merged_into}}: {d}"
            );
            Some((d.get_str("_id").unwrap().to_string(), into))
        })
        .collect()
}

/// Reads the `users` collection back into profiles (merged ids left out: see
/// [`mongo_merged`]).
pub async fn mongo_users(names: &Names) -> BTreeMap<String, UserProfile> {
    user_documents(names)
        .await
        .into_iter()
        .filter(|d| !d.contains_key("merged_into"))
        .map(|d| {
            let id = d.get_str("_id").unwrap().to_string();
            let traits = d
                .get_document("traits")
                .map(|t| {
                    t.iter()
                        .map(|(k, v)| (k.clone(), v.clone().into_relaxed_extjson()))
                        .collect()
                })
                .unwrap_or_default();
            let tags = d
                .get_array("tags")
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let events = d
                .get_document("events")
                .map(|e| {
                    e.iter()
                        .filter_map(|(k, v)| {
                            let s = v.as_document()?;
                            Some((
                                k.clone(),
                                EventStats {
                                    count: int(s.get("count")),
                                    first_at: ms(s.get("first_at"))?,
                                    last_at: ms(s.get("last_at"))?,
                                },
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let groups = d
                .get_document("groups")
                .map(|g| {
                    g.iter()
                        .filter_map(|(id, traits)| {
                            let traits = traits.as_document()?.iter();
                            let traits =
                                traits.map(|(k, v)| (k.clone(), v.clone().into_relaxed_extjson()));
                            Some((id.clone(), traits.collect()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let profile = UserProfile {
                traits,
                tags,
                event_count: int(d.get("event_count")),
                events,
                first_seen: ms(d.get("first_seen")),
                last_seen: ms(d.get("last_seen")),
                groups,
            };
            (id, profile)
        })
        .collect()
}

/// The command that sends `calls` (Segment messages, JSON) to the HTTP ingest on `port` through
/// an official client library: `segment` or `rudder` (Python, `tests/ingest_clients.py`) or
/// `node` (Segment's Node.js library, `tests/ingest_clients.js`).
pub fn ingest_client(lib: &str, port: u16, key: &str, calls: &[serde_json::Value]) -> Command {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = log_dir().join(format!(
        "ingest-calls-{lib}-{port}-{}-{n}.json",
        std::process::id()
    ));
    std::fs::write(&file, serde_json::to_vec(calls).unwrap()).unwrap();
    let host = format!("http://127.0.0.1:{port}");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut command = if lib == "node" {
        let mut c = Command::new("node");
        c.arg(dir.join("ingest_clients.js"))
            .env("NODE_PATH", tools().join("node_modules"))
            .args([&host, key]);
        c
    } else {
        let mut c = Command::new(tools().join("venv/bin/python"));
        c.arg(dir.join("ingest_clients.py")).args([lib, &host, key]);
        c
    };
    command.arg(&file);
    command
}

/// Waits until MongoDB's users equal the oracle's replay of `messages` (JSON messages, in the
/// order they were sent), failing after `limit` with the first differences.
pub async fn users_become(names: &Names, messages: &[serde_json::Value], limit: Duration) {
    let payloads: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| serde_json::to_vec(m).unwrap())
        .collect();
    let want = oracle::replay(payloads.iter().map(Vec::as_slice));
    let mut last = BTreeMap::new();
    let found = tokio::time::timeout(limit, async {
        loop {
            last = mongo_users(names).await;
            if last == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    if found.is_err() {
        assert_users_equal(&last, &want);
    }
}

/// Asserts the stored users equal the replay, naming the first differences.
pub fn assert_users_equal(
    actual: &BTreeMap<String, UserProfile>,
    want: &BTreeMap<String, UserProfile>,
) {
    let mut diffs = Vec::new();
    for (id, w) in want {
        match actual.get(id) {
            None => diffs.push(format!("{id}: missing")),
            Some(a) if a != w => diffs.push(format!("{id}:\n  want {w:?}\n  got  {a:?}")),
            _ => {}
        }
    }
    for id in actual.keys() {
        if !want.contains_key(id) {
            diffs.push(format!("{id}: unexpected"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} of {} users differ from the replay; first: {}",
        diffs.len(),
        want.len(),
        diffs.iter().take(3).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Every record of `<topic>.dlq`: (payload, herald-error header).
pub fn dead_letters(names: &Names) -> Vec<(Vec<u8>, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", format!("{}_dlq_reader", names.base))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let dlq = format!("{}.dlq", names.base);
    // Read up to the high watermark: everything Herald dead-lettered before this call.
    let (_, high) = consumer
        .fetch_watermarks(&dlq, 0, Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&dlq, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next = 0;
    while next < high {
        assert!(
            Instant::now() < deadline,
            "dead letters not readable up to {high}"
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            next = m.offset() + 1;
            let error = m
                .headers()
                .and_then(|h| {
                    h.iter()
                        .find(|h| h.key == "herald-error")
                        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                })
                .unwrap_or_default();
            out.push((m.payload().unwrap_or_default().to_vec(), error));
        }
    }
    out
}

/// Runs an async block on a fresh runtime (for the MongoDB reads).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Every record of the topic below `until[p]` per partition: (partition, offset, payload).
pub fn records_below(names: &Names, until: &[i64]) -> Vec<(i32, i64, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", format!("{}_reader", names.base))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..names.partitions {
        if until[p as usize] > 0 {
            tpl.add_partition_offset(&names.topic(), p, Offset::Beginning)
                .unwrap();
        }
    }
    let mut out = Vec::new();
    if tpl.count() == 0 {
        return out;
    }
    consumer.assign(&tpl).unwrap();
    let want: i64 = until.iter().sum();
    let mut seen = vec![0i64; names.partitions as usize];
    let started = Instant::now();
    while seen.iter().sum::<i64>() < want {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "reading the topic timed out"
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let p = m.partition();
            if m.offset() < until[p as usize] {
                seen[p as usize] += 1;
                out.push((p, m.offset(), m.payload().unwrap_or_default().to_vec()));
            }
        }
    }
    out
}

/// A private server process for outage tests (killed when dropped).
pub struct Private(pub Child);

impl Drop for Private {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Herald's `/metrics` on `port`, parsed.
pub fn scrape(port: u16) -> prometheus_parse::Scrape {
    let body = block_on(async {
        reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("the exposition parses")
}

/// Sum of a series' samples whose labels include `labels`.
pub fn sum(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

/// A port nothing listens on, for a child to listen on. Taken below Linux's ephemeral range
/// (32768–60999): a port from `bind(0)` is one that another test's outgoing connection can take
/// as its local port before the child binds it (seen: "Address already in use" while the
/// client-library tests were connecting). Each test binary starts at its own offset.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let seed = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    for _ in 0..SPAN {
        let port = (LOW + (seed + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN)
}

pub fn wait_port(port: u16, limit: Duration) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < limit, "port {port} did not open");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A private nx-27017 (from the virtualenv scripts/backends.sh made) on `port`.
pub fn private_mongo(port: u16, data: &std::path::Path) -> Private {
    let cache = std::env::var("HERALD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/herald"));
    std::fs::create_dir_all(data).unwrap();
    let child = Command::new(cache.join("nx-venv/bin/nx-27017"))
        .arg("--data-dir")
        .arg(data)
        .args(["--host", "127.0.0.1", "-p", &port.to_string()])
        // Its own pid and log files: by default nx-27017 refuses to start while another
        // instance's pid file (/tmp/nx_27017.pid) exists.
        .arg("--pid-file")
        .arg(data.join("nx.pid"))
        .arg("--log-file")
        .arg(data.join("nx.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nx-27017 (run scripts/backends.sh up first)");
    wait_port(port, Duration::from_secs(30));
    Private(child)
}

pub fn private_redis(port: u16) -> Private {
    private_redis_with(port, &[])
}

/// A private Redis on `port` with more settings (later ones override the defaults above).
pub fn private_redis_with(port: u16, settings: &[&str]) -> Private {
    let child = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(settings)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    wait_port(port, Duration::from_secs(30));
    Private(child)
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Publishes `(partition, key, payload)` records in order to the partitions named, whatever
/// their key hashes to (as a second producer with another partitioner, or added partitions,
/// would), batched as [`produce`] does.
pub fn produce_to_partitions(names: &Names, records: &[(i32, String, String)]) {
    produce_kafka_to(
        names,
        records
            .iter()
            .map(|(p, k, v)| (Some(*p), k.as_bytes(), v.as_bytes())),
    );
}

/// Publishes `(key, payload)` records in order, batched as [`produce`] does.
pub fn produce_records(names: &Names, records: &[(String, String)]) {
    produce_kafka(names, records.iter().map(|(k, p)| (k, p)));
}

/// Starts `herald run --config <file>` with the test's names plus `extra` environment.
pub fn spawn_herald_with_config(
    names: &Names,
    config: &std::path::Path,
    extra: &[(&str, &str)],
    tag: &str,
) -> Herald {
    let log = std::fs::File::create(log_dir().join(format!("{}-{tag}.log", names.base))).unwrap();
    Command::new(herald_bin())
        .arg("run")
        .arg("--config")
        .arg(config)
        .envs(names.env())
        .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(Herald)
        .expect("spawn herald run")
}

/// A running `herald provider-sim` on `port`, signing callbacks with `secret`.
pub fn spawn_sim(port: u16, secret: &str, args: &[&str], tag: &str) -> Private {
    let log = std::fs::File::create(log_dir().join(format!("sim-{tag}-{port}.log"))).unwrap();
    let child = Command::new(herald_bin())
        .arg("provider-sim")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .env("HERALD_SIM_WEBHOOK_SECRET", secret)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn provider-sim");
    wait_port(port, Duration::from_secs(20));
    Private(child)
}

/// Queues scripted answers for a recipient at a provider-sim.
pub async fn sim_script(port: u16, to: &str, steps: serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/script"))
        .json(&serde_json::json!({ "to": to, "steps": steps }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "script: {}", r.status());
}

/// A provider-sim's JSON answer to `GET path`.
async fn sim_get(port: u16, path: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Every send a provider-sim received.
pub async fn sim_sends(port: u16) -> Vec<serde_json::Value> {
    match sim_get(port, "/v1/messages").await {
        serde_json::Value::Array(sends) => sends,
        other => panic!("/v1/messages answered {other}"),
    }
}

pub async fn sim_stats(port: u16) -> serde_json::Value {
    sim_get(port, "/v1/stats").await
}

/// The `messages` collection, by `_id`.
pub async fn mongo_messages(names: &Names) -> BTreeMap<String, Document> {
    let client = mongodb::Client::with_uri_str(&names.mongo).await.unwrap();
    let coll = client
        .database(&names.base)
        .collection::<Document>("messages");
    let docs: Vec<Document> = coll
        .find(Document::new())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    docs.into_iter()
        .map(|d| (d.get_str("_id").unwrap_or_default().to_string(), d))
        .collect()
}

/// Where the test's Herald keeps its Redis data: the cluster (`HERALD_TEST_REDIS=cluster`, for
/// tests on the shared Redis) or `names.redis`.
pub fn redis_target(names: &Names) -> herald::adapters::redis::connection::RedisTarget {
    use herald::adapters::redis::connection::RedisTarget;
    if on_redis_cluster() && names.redis == REDIS {
        RedisTarget::Cluster {
            nodes: REDIS_CLUSTER.split(',').map(str::to_string).collect(),
        }
    } else {
        RedisTarget::Single {
            url: names.redis.clone(),
            retry_db: 1,
        }
    }
}

/// Every entry of the test's retry schedule: (message id, stored attempt, due ms), read from
/// its 16 parts (`<prefix>retry:{r<n>}:entry|due`).
pub fn retry_entries(names: &Names) -> Vec<(String, String, i64)> {
    let mut conn = cluster_aware_connection(&redis_target(names));
    let mut out = Vec::new();
    for part in 0..16 {
        let entries: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("{}:retry:{{r{part}}}:entry", names.base))
            .query(&mut conn)
            .unwrap();
        let due: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(format!("{}:retry:{{r{part}}}:due", names.base))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query(&mut conn)
            .unwrap();
        for (id, at) in due {
            let attempt = entries.get(&id).cloned().unwrap_or_default();
            out.push((id, attempt, at as i64));
        }
    }
    out
}

/// Waits until the retry schedule holds exactly `n` entries, each for attempt 2: every first
/// send was answered retryable and its retry is scheduled.
/// On a timeout it says how far the schedule got.
pub async fn wait_retries_scheduled(names: &Names, n: usize, limit: Duration) {
    let started = Instant::now();
    loop {
        let names = names.clone();
        let entries = tokio::task::spawn_blocking(move || retry_entries(&names))
            .await
            .unwrap();
        let second = entries.iter().filter(|(_, a, _)| a == "2").count();
        if entries.len() == n && second == n {
            eprintln!("{n} retries scheduled after {:?}", started.elapsed());
            return;
        }
        assert!(
            started.elapsed() < limit,
            "timed out waiting for {n} retries scheduled: {} entries, {second} for attempt 2",
            entries.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `cond` (async) until it holds, failing with `what` after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !cond().await {
        assert!(started.elapsed() < limit, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What MongoDB, the system of record, holds of each user's bookkeeping: its version, last
/// applied offset per partition and dedup window (`_herald.v`, `_herald.pos`, `_herald.seen`:
/// base64 of 16 bytes per entry, the 64-bit fingerprint then the time, big-endian), decoded
/// here independently of Herald's code.
pub struct StoredState {
    pub version: i64,
    pub positions: BTreeMap<u32, i64>,
    pub seen: BTreeSet<u64>,
}

pub async fn stored_states(names: &Names) -> BTreeMap<String, StoredState> {
    let client = mongodb::Client::with_uri_str(&names.mongo).await.unwrap();
    let docs: Vec<Document> = client
        .database(&names.base)
        .collection::<Document>("users")
        .find(mongodb::bson::doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    docs.into_iter()
        .filter_map(|d| {
            let id = d.get_str("_id").ok()?.to_string();
            let h = d.get_document("_herald").ok()?;
            let version = int(h.get("v"));
            let positions = h
                .get_document("pos")
                .map(|p| {
                    p.iter()
                        .map(|(k, v)| (k.parse().unwrap(), int(Some(v))))
                        .collect()
                })
                .unwrap_or_default();
            let seen = match h.get("seen") {
                Some(Bson::String(text)) => {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD
                        .decode(text)
                        .unwrap()
                        .chunks_exact(16)
                        .map(|c| u64::from_be_bytes(c[..8].try_into().unwrap()))
                        .collect()
                }
                _ => BTreeSet::new(),
            };
            Some((
                id,
                StoredState {
                    version,
                    positions,
                    seen,
                },
            ))
        })
        .collect()
}

/// Whether a stored state remembers a `messageId` in its dedup window (the fingerprint is
/// XXH3-64 of the id with the seed "heraldid", a fixed specification).
pub fn remembers(state: &StoredState, message_id: &str) -> bool {
    state.seen.contains(&xxhash_rust::xxh3::xxh3_64_with_seed(
        message_id.as_bytes(),
        0x6865_7261_6c64_6964,
    ))
}

/// Where `scripts/backends.sh up` installs Prism, the providers' Python libraries and the
/// Segment/RudderStack client libraries.
pub fn tools() -> PathBuf {
    let cache = std::env::var_os("HERALD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/herald")
        });
    let tools = cache.join("provider-tools");
    assert!(
        tools.join("venv/.complete-4").exists()
            && tools.join("node_modules/.bin/prism").exists()
            && tools.join("node_modules/@segment/analytics-node").exists(),
        "provider tools missing under {}: run scripts/backends.sh up",
        tools.display()
    );
    tools
}

/// Records of one user spread over two partitions, all of their updates commutative across
/// partitions (per-partition trait keys, tags only added, event counts and min/max times), so
/// the expected profile does not depend on how the partitions interleave.
pub fn split_users(users: usize, per_user: usize, partitions: i32) -> Vec<(i32, String, String)> {
    let mut out = Vec::with_capacity(users * per_user);
    for round in 0..per_user {
        for u in 0..users {
            let user = format!("split-{u}");
            let side = (round % 2) as i32;
            let partition = (u as i32 + side) % partitions;
            let ts = format!(
                "2026-11-23T10:{:02}:{:02}Z",
                (round / 60) % 60,
                (round + u) % 60
            );
            let id = format!("{user}-{round}");
            let payload = if round % 3 == 0 {
                format!(
                    r#"{{"messageId":"{id}","type":"identify","userId":"{user}","timestamp":"{ts}","traits":{{"p{side}_last":{round},"p{side}_name":"n{u}"}},"tags":{{"add":["side{side}"]}}}}"#
                )
            } else {
                let event = ["viewed", "clicked", "bought"][round % 3];
                format!(
                    r#"{{"messageId":"{id}","type":"track","userId":"{user}","timestamp":"{ts}","event":"{event}"}}"#
                )
            };
            out.push((partition, user, payload));
        }
    }
    out
}
