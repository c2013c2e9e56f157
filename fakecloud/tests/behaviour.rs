//! One test per AWS behaviour fakecloud models, driven by a manual clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dovetail::aws::cloud::{
    BlockDevice, CapacityReservationQuery, CapacityReservationSpec, CapacityType, Cloud,
    CreateFleetRequest, DescribeInstancesRequest, FleetOverride, ImageQuery, InstanceState,
    LaunchTemplateData, OnDemandStrategy, ReservationType, TagFilter,
};
use dovetail::clock::{Clock, ManualClock};
use dovetail::journal::Journal;
use fakecloud::reservations::ReservationSpec;
use fakecloud::{Catalog, CloudConfig, FakeCloud};
use futures::executor::block_on;
use jiff::Timestamp;

fn manual_clock() -> ManualClock {
    ManualClock::starting_at(Timestamp::from_second(1_767_225_600).unwrap())
}

struct Silent;
impl Journal for Silent {
    fn record(&self, _: &'static str, _: String) {}
}

fn config() -> CloudConfig {
    CloudConfig {
        offering_probability: 1.0,
        api_latency: (Duration::from_millis(10), Duration::from_millis(10)),
        visibility_lag: (Duration::ZERO, Duration::ZERO),
        launch_latency: (Duration::from_secs(5), Duration::from_secs(5)),
        foreign_instances: 0,
        ..CloudConfig::default()
    }
}

fn cloud_with(cfg: CloudConfig, seed: u64) -> (FakeCloud, ManualClock) {
    let clock = manual_clock();
    let cloud = FakeCloud::new(
        cfg,
        Catalog::builtin(),
        seed,
        Arc::new(clock.clone()),
        Arc::new(Silent),
    );
    (cloud, clock)
}

fn template(cloud: &FakeCloud, name: &str, kms: Option<&str>) {
    let data = LaunchTemplateData {
        image_id: "ami-1".into(),
        block_devices: vec![BlockDevice {
            device_name: "/dev/xvda".into(),
            volume_size_gib: Some(20),
            encrypted: Some(kms.is_some()),
            kms_key_id: kms.map(String::from),
            ..Default::default()
        }],
        ..Default::default()
    };
    block_on(cloud.create_launch_template(name.into(), data)).unwrap();
}

fn subnet(cloud: &FakeCloud, zone: &str) -> String {
    block_on(cloud.describe_subnets())
        .unwrap()
        .into_iter()
        .find(|s| s.zone == zone)
        .unwrap()
        .id
}

fn over(cloud: &FakeCloud, t: &str, zone: &str) -> FleetOverride {
    FleetOverride {
        launch_template_name: "lt".into(),
        instance_type: t.into(),
        subnet_id: subnet(cloud, zone),
        zone: zone.into(),
        priority: None,
    }
}

fn fleet(ct: CapacityType, overrides: Vec<FleetOverride>, target: u32) -> CreateFleetRequest {
    CreateFleetRequest {
        client_token: "t".into(),
        context: None,
        capacity_type: ct,
        reservation: None,
        on_demand_strategy: OnDemandStrategy::LowestPrice,
        overrides,
        target_capacity: target,
        tags: [("karpenter.sh/nodeclaim".to_string(), "c".to_string())].into(),
    }
}

#[test]
fn ice_on_some_overrides_with_partial_success_elsewhere() {
    let (cloud, _) = cloud_with(config(), 1);
    template(&cloud, "lt", None);
    cloud.set_pool_depth("m5.large", "us-east-1a", CapacityType::OnDemand, 0);
    cloud.set_pool_depth("m5.xlarge", "us-east-1a", CapacityType::OnDemand, 2);
    let out = block_on(cloud.create_fleet(fleet(
        CapacityType::OnDemand,
        vec![
            over(&cloud, "m5.large", "us-east-1a"),
            over(&cloud, "m5.xlarge", "us-east-1a"),
        ],
        3,
    )))
    .unwrap();
    assert_eq!(out.instances.len(), 2, "the deep pool supplies what it has");
    assert!(out.instances.iter().all(|i| i.instance_type == "m5.xlarge"));
    let codes: Vec<(&str, &str)> = out
        .errors
        .iter()
        .map(|e| (e.code.as_str(), e.instance_type.as_str()))
        .collect();
    assert!(
        codes.contains(&("InsufficientInstanceCapacity", "m5.large")),
        "{codes:?}"
    );
    assert!(
        codes.iter().any(|(c, _)| *c == "UnfulfillableCapacity"),
        "{codes:?}"
    );
    assert_eq!(
        cloud.pool_depth("m5.xlarge", "us-east-1a", CapacityType::OnDemand),
        Some(0)
    );
}

#[test]
fn lowest_price_takes_the_cheapest_on_demand_override() {
    let (cloud, _) = cloud_with(config(), 1);
    template(&cloud, "lt", None);
    let out = block_on(cloud.create_fleet(fleet(
        CapacityType::OnDemand,
        vec![
            over(&cloud, "m5.2xlarge", "us-east-1a"),
            over(&cloud, "m5.large", "us-east-1b"),
        ],
        1,
    )))
    .unwrap();
    assert_eq!(out.instances[0].instance_type, "m5.large");
}

#[test]
fn the_on_demand_strategy_is_what_the_request_asks_for() {
    let (cloud, _) = cloud_with(config(), 1);
    template(&cloud, "lt", None);
    // m5.2xlarge carries priority 0, m5.large none, m5.xlarge priority 1.
    let overrides = || {
        let mut big = over(&cloud, "m5.2xlarge", "us-east-1a");
        big.priority = Some(0.0);
        let mut mid = over(&cloud, "m5.xlarge", "us-east-1a");
        mid.priority = Some(1.0);
        vec![over(&cloud, "m5.large", "us-east-1a"), big, mid]
    };
    let launch = |strategy| {
        let mut request = fleet(CapacityType::OnDemand, overrides(), 2);
        request.on_demand_strategy = strategy;
        let out = block_on(cloud.create_fleet(request)).unwrap();
        out.instances
            .iter()
            .map(|i| i.instance_type.clone())
            .collect::<Vec<_>>()
    };
    // lowest-price ignores the priorities (they only break price ties).
    assert_eq!(
        launch(OnDemandStrategy::LowestPrice),
        ["m5.large", "m5.large"]
    );
    // prioritized follows them, whatever the price.
    assert_eq!(
        launch(OnDemandStrategy::Prioritized),
        ["m5.2xlarge", "m5.2xlarge"]
    );
    // An override without a priority comes last: with the prioritized ones out of capacity it launches.
    let mut request = fleet(
        CapacityType::OnDemand,
        vec![over(&cloud, "m5.large", "us-east-1b"), {
            let mut o = over(&cloud, "no.such-type", "us-east-1b");
            o.priority = Some(0.0);
            o
        }],
        1,
    );
    request.on_demand_strategy = OnDemandStrategy::Prioritized;
    let out = block_on(cloud.create_fleet(request)).unwrap();
    assert_eq!(
        out.instances[0].instance_type, "m5.large",
        "{:?}",
        out.errors
    );
}

#[test]
fn price_capacity_optimized_prefers_deep_pools_then_price() {
    let (cloud, _) = cloud_with(config(), 3);
    template(&cloud, "lt", None);
    let prices: BTreeMap<(String, String), f64> = block_on(cloud.describe_spot_price_history())
        .unwrap()
        .into_iter()
        .map(|p| ((p.instance_type, p.zone), p.price))
        .collect();
    let a = ("c5.large", "us-east-1a");
    let b = ("m5.large", "us-east-1a");
    let (cheap, dear) = if prices[&(a.0.into(), a.1.into())] < prices[&(b.0.into(), b.1.into())] {
        (a, b)
    } else {
        (b, a)
    };
    // The cheap pool is nearly dry, the dearer one deep: capacity first.
    cloud.set_pool_depth(cheap.0, cheap.1, CapacityType::Spot, 1);
    cloud.set_pool_depth(dear.0, dear.1, CapacityType::Spot, 100);
    let overrides = vec![over(&cloud, cheap.0, cheap.1), over(&cloud, dear.0, dear.1)];
    let out =
        block_on(cloud.create_fleet(fleet(CapacityType::Spot, overrides.clone(), 1))).unwrap();
    assert_eq!(out.instances[0].instance_type, dear.0);
    // Both deep: price decides.
    cloud.set_pool_depth(cheap.0, cheap.1, CapacityType::Spot, 100);
    let out = block_on(cloud.create_fleet(fleet(CapacityType::Spot, overrides, 1))).unwrap();
    assert_eq!(out.instances[0].instance_type, cheap.0);
}

#[test]
fn a_disabled_kms_key_terminates_the_instance_before_it_runs() {
    let (cloud, clock) = cloud_with(config(), 1);
    template(&cloud, "lt", Some("alias/ebs"));
    cloud.disable_kms_key(
        "alias/ebs",
        clock.now().checked_add(Duration::from_secs(600)).unwrap(),
    );
    let out = block_on(cloud.create_fleet(fleet(
        CapacityType::OnDemand,
        vec![over(&cloud, "m5.large", "us-east-1a")],
        1,
    )))
    .unwrap();
    let id = out.instances[0].id.clone();
    assert_eq!(
        out.instances[0].state,
        InstanceState::Pending,
        "EC2 accepts the launch"
    );
    for _ in 0..100 {
        clock.advance(Duration::from_millis(100));
        cloud.step();
        let rec = record(&cloud, &id);
        assert_ne!(
            rec.instance.state,
            InstanceState::Running,
            "a KMS-broken instance never runs"
        );
    }
    let rec = record(&cloud, &id);
    assert_eq!(rec.instance.state, InstanceState::Terminated);
    assert_eq!(
        rec.instance.state_reason.unwrap().message,
        "Client.InternalError: Client error on launch"
    );
}

#[test]
fn the_spot_warning_comes_exactly_two_minutes_before_termination() {
    let (cloud, clock) = cloud_with(config(), 1);
    template(&cloud, "lt", None);
    let out = block_on(cloud.create_fleet(fleet(
        CapacityType::Spot,
        vec![over(&cloud, "m5.large", "us-east-1a")],
        1,
    )))
    .unwrap();
    let id = out.instances[0].id.clone();
    clock.advance(Duration::from_secs(6));
    cloud.step();
    // Drain the state-change notifications.
    while !block_on(cloud.receive_messages(&config().queue_url, 10, Duration::from_secs(300)))
        .unwrap()
        .is_empty()
    {}
    let warned_at = clock.now();
    assert_eq!(
        cloud.spot_interruption(Some("us-east-1a"), 1.0),
        vec![id.clone()]
    );
    let msgs =
        block_on(cloud.receive_messages(&config().queue_url, 10, Duration::from_secs(30))).unwrap();
    let warning: serde_json::Value = serde_json::from_str(&msgs[0].body).unwrap();
    assert_eq!(
        warning["detail-type"],
        "EC2 Spot Instance Interruption Warning"
    );
    assert_eq!(warning["detail"]["instance-id"], id.as_str());
    assert_eq!(warning["time"], warned_at.to_string());
    let state = |c: &FakeCloud| {
        c.instances()
            .into_iter()
            .find(|r| r.instance.id == id)
            .unwrap()
            .instance
            .state
    };
    let elapsed = clock.now().duration_since(warned_at);
    clock.advance(
        Duration::try_from(jiff::SignedDuration::from_secs(120) - elapsed).unwrap()
            - Duration::from_millis(1),
    );
    cloud.step();
    assert_eq!(
        state(&cloud),
        InstanceState::Running,
        "still running 1 ms before the two minutes"
    );
    clock.advance(Duration::from_millis(1));
    cloud.step();
    assert_eq!(
        state(&cloud),
        InstanceState::ShuttingDown,
        "reclaimed at exactly two minutes"
    );
}

#[test]
fn describe_instances_is_eventually_consistent() {
    let cfg = CloudConfig {
        visibility_lag: (Duration::from_secs(2), Duration::from_secs(2)),
        ..config()
    };
    let (cloud, clock) = cloud_with(cfg, 1);
    template(&cloud, "lt", None);
    let out = block_on(cloud.create_fleet(fleet(
        CapacityType::OnDemand,
        vec![over(&cloud, "m5.large", "us-east-1a")],
        1,
    )))
    .unwrap();
    let id = out.instances[0].id.clone();
    let by_id = DescribeInstancesRequest {
        instance_ids: vec![id.clone()],
        ..Default::default()
    };
    let err = block_on(cloud.describe_instances(by_id.clone())).unwrap_err();
    assert_eq!(err.code, "InvalidInstanceID.NotFound");
    assert!(
        block_on(cloud.describe_instances(DescribeInstancesRequest::default()))
            .unwrap()
            .instances
            .is_empty()
    );
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        block_on(cloud.describe_instances(by_id)).unwrap().instances[0].id,
        id
    );
}

#[test]
fn throttling_answers_request_limit_exceeded_until_it_ends() {
    let (cloud, clock) = cloud_with(config(), 1);
    let until = clock.now().checked_add(Duration::from_secs(60)).unwrap();
    cloud.throttle(1.0, until);
    assert_eq!(
        block_on(cloud.describe_subnets()).unwrap_err().code,
        "RequestLimitExceeded"
    );
    clock.advance(Duration::from_secs(60));
    assert!(block_on(cloud.describe_subnets()).is_ok());
    // A partial rate throttles some calls, and the same seed throttles the same ones.
    let pattern = |seed| {
        let (c, k) = cloud_with(config(), seed);
        c.throttle(0.5, k.now().checked_add(Duration::from_secs(3600)).unwrap());
        (0..40)
            .map(|_| block_on(c.describe_subnets()).is_ok())
            .collect::<Vec<_>>()
    };
    let p = pattern(9);
    assert!(p.iter().any(|ok| *ok) && p.iter().any(|ok| !*ok));
    assert_eq!(p, pattern(9));
}

#[test]
fn vcpu_and_launch_template_quotas_are_enforced() {
    let cfg = CloudConfig {
        spot_vcpu_quota: 4,
        on_demand_vcpu_quota: 2,
        launch_template_quota: 1,
        ..config()
    };
    let (cloud, _) = cloud_with(cfg, 1);
    template(&cloud, "lt", None);
    let out = block_on(cloud.create_fleet(fleet(
        CapacityType::Spot,
        vec![over(&cloud, "m5.2xlarge", "us-east-1a")],
        1,
    )))
    .unwrap();
    assert!(out.instances.is_empty());
    assert_eq!(out.errors[0].code, "MaxSpotInstanceCountExceeded");
    let out = block_on(cloud.create_fleet(fleet(
        CapacityType::OnDemand,
        vec![over(&cloud, "m5.large", "us-east-1a")],
        2,
    )))
    .unwrap();
    assert_eq!(
        out.instances.len(),
        1,
        "2 vCPUs fit, the second instance does not"
    );
    assert!(out.errors.iter().any(|e| e.code == "VcpuLimitExceeded"));
    let err =
        block_on(cloud.create_launch_template("another".into(), LaunchTemplateData::default()))
            .unwrap_err();
    assert_eq!(err.code, "MaxTemplateLimitExceeded");
    let err = block_on(cloud.create_launch_template("lt".into(), LaunchTemplateData::default()))
        .unwrap_err();
    assert_eq!(err.code, "InvalidLaunchTemplateName.AlreadyExistsException");
}

#[test]
fn describe_instances_pages_and_filters() {
    let (cloud, _) = cloud_with(config(), 1);
    template(&cloud, "lt", None);
    let out = block_on(cloud.create_fleet(fleet(
        CapacityType::OnDemand,
        vec![over(&cloud, "m5.large", "us-east-1a")],
        12,
    )))
    .unwrap();
    assert_eq!(out.instances.len(), 12);
    let mut seen = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let page = block_on(cloud.describe_instances(DescribeInstancesRequest {
            max_results: Some(5),
            next_token: token.clone(),
            ..Default::default()
        }))
        .unwrap();
        pages += 1;
        seen.extend(page.instances.into_iter().map(|i| i.id));
        token = page.next_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!((pages, seen.len()), (3, 12));
    let tagged = block_on(cloud.describe_instances(DescribeInstancesRequest {
        tag_keys: vec!["karpenter.sh/nodeclaim".into()],
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(tagged.instances.len(), 12);
    let none = block_on(cloud.describe_instances(DescribeInstancesRequest {
        tags: [("karpenter.sh/nodeclaim".to_string(), "other".to_string())].into(),
        ..Default::default()
    }))
    .unwrap();
    assert!(none.instances.is_empty());
    let bad = block_on(cloud.describe_instances(DescribeInstancesRequest {
        instance_ids: vec![seen[0].clone()],
        max_results: Some(5),
        ..Default::default()
    }));
    assert_eq!(bad.unwrap_err().code, "InvalidParameterCombination");
}

#[test]
fn messages_come_back_after_the_visibility_timeout_until_deleted() {
    let (cloud, clock) = cloud_with(config(), 1);
    let url = config().queue_url;
    cloud.inject_message("not json at all".into());
    let first = block_on(cloud.receive_messages(&url, 10, Duration::from_secs(30))).unwrap();
    assert_eq!(first.len(), 1);
    assert!(
        block_on(cloud.receive_messages(&url, 10, Duration::from_secs(30)))
            .unwrap()
            .is_empty(),
        "hidden while in flight"
    );
    clock.advance(Duration::from_secs(31));
    let again = block_on(cloud.receive_messages(&url, 10, Duration::from_secs(30))).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message_id, first[0].message_id);
    assert_ne!(again[0].receipt_handle, first[0].receipt_handle);
    assert_eq!(
        block_on(cloud.delete_message(&url, &first[0].receipt_handle))
            .unwrap_err()
            .code,
        "ReceiptHandleIsInvalid"
    );
    block_on(cloud.delete_message(&url, &again[0].receipt_handle)).unwrap();
    clock.advance(Duration::from_secs(31));
    assert!(
        block_on(cloud.receive_messages(&url, 10, Duration::from_secs(30)))
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        block_on(cloud.receive_messages(&url, 11, Duration::from_secs(30)))
            .unwrap_err()
            .code,
        "InvalidParameterValue"
    );
    assert_eq!(
        block_on(cloud.receive_messages("https://nope", 1, Duration::from_secs(30)))
            .unwrap_err()
            .code,
        "AWS.SimpleQueueService.NonExistentQueue"
    );
}

#[test]
fn same_seed_same_prices_and_fleet_decisions() {
    let run = |seed| {
        let (cloud, _) = cloud_with(
            CloudConfig {
                offering_probability: 0.7,
                ..config()
            },
            seed,
        );
        template(&cloud, "lt", None);
        let prices: Vec<(String, String, f64)> = block_on(cloud.describe_spot_price_history())
            .unwrap()
            .into_iter()
            .map(|p| (p.instance_type, p.zone, p.price))
            .collect();
        let offered = block_on(cloud.describe_instance_type_offerings())
            .unwrap()
            .len();
        let overrides: Vec<FleetOverride> = ["c5.large", "m5.large", "r5.large"]
            .iter()
            .flat_map(|t| ["us-east-1a", "us-east-1b"].map(|z| over(&cloud, t, z)))
            .collect();
        let out = block_on(cloud.create_fleet(fleet(CapacityType::Spot, overrides, 4))).unwrap();
        let fleet: Vec<(String, String, String)> = out
            .instances
            .into_iter()
            .map(|i| (i.id, i.instance_type, i.zone))
            .collect();
        (prices, offered, fleet)
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5).0, run(6).0, "another seed, other prices");
}

#[test]
fn spot_prices_move_within_their_band() {
    let (cloud, clock) = cloud_with(config(), 1);
    let before = block_on(cloud.describe_spot_price_history()).unwrap();
    clock.advance(Duration::from_secs(3601));
    cloud.step();
    let after = block_on(cloud.describe_spot_price_history()).unwrap();
    assert_ne!(before, after);
    for p in &after {
        let od = cloud.entry(&p.instance_type).unwrap().on_demand_price;
        assert!(
            p.price >= od * 0.30 - 1e-4 && p.price <= od * 0.70 + 1e-4,
            "{p:?} outside 30-70% of {od}"
        );
    }
}

#[test]
fn terminating_a_foreign_instance_is_a_violation() {
    let (cloud, _) = cloud_with(
        CloudConfig {
            foreign_instances: 2,
            ..config()
        },
        1,
    );
    let foreign: Vec<String> = cloud
        .instances()
        .into_iter()
        .filter(|r| r.foreign)
        .map(|r| r.instance.id)
        .collect();
    assert_eq!(foreign.len(), 2);
    block_on(cloud.terminate_instances(vec![foreign[0].clone()])).unwrap();
    assert_eq!(cloud.violations().len(), 1);
}

#[test]
fn selectors_and_ami_releases() {
    let (cloud, _) = cloud_with(config(), 1);
    let discovery = TagFilter {
        tags: [("karpenter.sh/discovery".to_string(), "sim".to_string())].into(),
        ..Default::default()
    };
    assert_eq!(
        block_on(cloud.describe_security_groups(discovery))
            .unwrap()
            .len(),
        1
    );
    let al2023 = ImageQuery {
        filter: TagFilter {
            names: vec!["amazon-eks-node-al2023-x86_64-standard-1.33-*".into()],
            ..Default::default()
        },
        owners: vec!["amazon".into()],
    };
    let before = block_on(cloud.describe_images(al2023.clone())).unwrap();
    assert_eq!(before.len(), 2, "the previous and the current release");
    let recommended = "/aws/service/eks/optimized-ami/1.33/amazon-linux-2023/x86_64/standard/recommended/image_id";
    let current = block_on(cloud.get_parameter(recommended)).unwrap();
    assert!(before.iter().any(|i| i.id == current));
    // The account's own images only: EKS images are Amazon's.
    let mine = ImageQuery {
        owners: vec!["self".into()],
        ..al2023.clone()
    };
    assert!(block_on(cloud.describe_images(mine)).unwrap().is_empty());
    let missing =
        block_on(cloud.get_parameter("/aws/service/eks/optimized-ami/1.20/none")).unwrap_err();
    assert_eq!(missing.code, "ParameterNotFound");

    let ids = cloud.release_ami("x86_64", "v20260301", true);
    let images = block_on(cloud.describe_images(al2023)).unwrap();
    assert_eq!(images.len(), 3);
    let now_recommended = block_on(cloud.get_parameter(recommended)).unwrap();
    assert!(ids.contains(&now_recommended) && now_recommended != current);
    let old = images.iter().find(|i| i.id == current).unwrap();
    assert!(old.deprecation_time.is_some(), "withdrawn: deprecated now");
    let pinned = "/aws/service/eks/optimized-ami/1.33/amazon-linux-2023/x86_64/standard/amazon-eks-node-al2023-x86_64-standard-1.33-v20251201/image_id";
    assert_eq!(
        block_on(cloud.get_parameter(pinned)).unwrap(),
        current,
        "a pinned release stays"
    );
}

#[test]
fn a_fleet_without_its_launch_template_is_refused() {
    let (cloud, _) = cloud_with(config(), 1);
    let err = block_on(cloud.create_fleet(fleet(
        CapacityType::OnDemand,
        vec![over(&cloud, "m5.large", "us-east-1a")],
        1,
    )))
    .unwrap_err();
    assert_eq!(err.code, "InvalidLaunchTemplateName.NotFoundException");
}

fn reservation(
    id: &str,
    t: &str,
    count: u32,
    criteria: &str,
    kind: ReservationType,
) -> ReservationSpec {
    ReservationSpec {
        id: Some(id.into()),
        instance_type: t.into(),
        zone: "us-east-1a".into(),
        count,
        instance_match_criteria: criteria.into(),
        kind,
        owner_id: "123456789012".into(),
        tags: [("purpose".to_string(), "sale".to_string())].into(),
        starts_after: Duration::ZERO,
        lasts: None,
    }
}

fn with_reservation(spec: ReservationSpec) -> (FakeCloud, ManualClock) {
    cloud_with(
        CloudConfig {
            capacity_reservations: vec![spec],
            ..config()
        },
        1,
    )
}

fn record(cloud: &FakeCloud, id: &str) -> fakecloud::InstanceRecord {
    cloud
        .instances()
        .into_iter()
        .find(|r| r.instance.id == id)
        .unwrap()
}

fn instance_state(cloud: &FakeCloud, id: &str) -> InstanceState {
    record(cloud, id).instance.state
}

fn targeting(cloud: &FakeCloud, name: &str, id: &str, market: Option<&str>) {
    let data = LaunchTemplateData {
        image_id: "ami-1".into(),
        capacity_reservation: Some(CapacityReservationSpec {
            preference: "capacity-reservations-only".into(),
            target_id: Some(id.into()),
        }),
        market_type: market.map(String::from),
        ..Default::default()
    };
    block_on(cloud.create_launch_template(name.into(), data)).unwrap();
}

#[test]
fn a_targeted_reservation_fills_then_answers_reservation_capacity_exceeded() {
    let (cloud, _) = with_reservation(reservation(
        "cr-1",
        "m5.large",
        2,
        "targeted",
        ReservationType::Default,
    ));
    targeting(&cloud, "lt-cr", "cr-1", None);
    let mut o = over(&cloud, "m5.large", "us-east-1a");
    o.launch_template_name = "lt-cr".into();
    let mut request = fleet(CapacityType::OnDemand, vec![o], 1);
    request.reservation = Some(ReservationType::Default);
    for _ in 0..2 {
        let out = block_on(cloud.create_fleet(request.clone())).unwrap();
        let i = &out.instances[0];
        assert_eq!(i.capacity_reservation_id.as_deref(), Some("cr-1"));
        assert_eq!(
            i.capacity_reservation_preference.as_deref(),
            Some("capacity-reservations-only")
        );
    }
    let listed = block_on(
        cloud.describe_capacity_reservations(CapacityReservationQuery {
            tags: [("purpose".to_string(), "*".to_string())].into(),
            ..Default::default()
        }),
    )
    .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            listed[0].total_instance_count,
            listed[0].available_instance_count
        ),
        (2, 0)
    );
    let out = block_on(cloud.create_fleet(request)).unwrap();
    assert!(out.instances.is_empty());
    assert_eq!(out.errors[0].code, "ReservationCapacityExceeded");
    // Nothing was billed per instance: the reservation is paid whole.
    assert!(cloud.instances().iter().all(|r| r.price == 0.0));
    let od = cloud.entry("m5.large").unwrap().on_demand_price;
    assert!((cloud.reservation_cost_per_hour() - 2.0 * od).abs() < 1e-9);
    let unknown = block_on(
        cloud.describe_capacity_reservations(CapacityReservationQuery {
            ids: vec!["cr-404".into()],
            ..Default::default()
        }),
    );
    assert_eq!(
        unknown.unwrap_err().code,
        "InvalidCapacityReservationId.NotFound"
    );
}

#[test]
fn an_open_reservation_absorbs_on_demand_launches_that_leave_the_default() {
    let (cloud, _) = with_reservation(reservation(
        "cr-open",
        "m5.large",
        1,
        "open",
        ReservationType::Default,
    ));
    template(&cloud, "lt", None);
    let launch = || {
        block_on(cloud.create_fleet(fleet(
            CapacityType::OnDemand,
            vec![over(&cloud, "m5.large", "us-east-1a")],
            1,
        )))
        .unwrap()
        .instances
        .remove(0)
    };
    let first = launch();
    assert_eq!(first.capacity_reservation_id.as_deref(), Some("cr-open"));
    assert_eq!(
        first.capacity_reservation_preference.as_deref(),
        Some("open")
    );
    let second = launch();
    assert_eq!(
        second.capacity_reservation_id, None,
        "the reservation holds one"
    );
    // A template that opts out (`none`, Karpenter's on-demand launches) never lands in it.
    let (cloud, _) = with_reservation(reservation(
        "cr-open",
        "m5.large",
        1,
        "open",
        ReservationType::Default,
    ));
    let data = LaunchTemplateData {
        capacity_reservation: Some(CapacityReservationSpec {
            preference: "none".into(),
            target_id: None,
        }),
        ..Default::default()
    };
    block_on(cloud.create_launch_template("lt".into(), data)).unwrap();
    let out = block_on(cloud.create_fleet(fleet(
        CapacityType::OnDemand,
        vec![over(&cloud, "m5.large", "us-east-1a")],
        1,
    )))
    .unwrap();
    assert_eq!(out.instances[0].capacity_reservation_id, None);
}

#[test]
fn a_capacity_block_warns_forty_minutes_ahead_and_reclaims_from_thirty() {
    let mut block = reservation(
        "cr-blk",
        "p3.8xlarge",
        1,
        "targeted",
        ReservationType::CapacityBlock,
    );
    block.lasts = Some(Duration::from_secs(2 * 3600));
    let (cloud, clock) = with_reservation(block);
    targeting(&cloud, "lt-blk", "cr-blk", Some("capacity-block"));
    let mut o = over(&cloud, "p3.8xlarge", "us-east-1a");
    o.launch_template_name = "lt-blk".into();
    // Without the capacity-block target capacity type EC2 refuses the block.
    let plain =
        block_on(cloud.create_fleet(fleet(CapacityType::OnDemand, vec![o.clone()], 1))).unwrap();
    assert_eq!(plain.errors[0].code, "InvalidParameterValue");
    let mut request = fleet(CapacityType::OnDemand, vec![o], 1);
    request.reservation = Some(ReservationType::CapacityBlock);
    let out = block_on(cloud.create_fleet(request)).unwrap();
    let id = out.instances[0].id.clone();
    assert_eq!(
        out.instances[0].instance_lifecycle.as_deref(),
        Some("capacity-block")
    );
    clock.advance(Duration::from_secs(79 * 60));
    cloud.step();
    let queue = |cloud: &FakeCloud| {
        block_on(cloud.receive_messages(&cloud.config().queue_url, 10, Duration::from_secs(1)))
            .unwrap()
    };
    assert!(
        queue(&cloud)
            .iter()
            .all(|m| !m.body.contains("Capacity Block Expiration Warning"))
    );
    clock.advance(Duration::from_secs(60));
    cloud.step();
    assert!(
        queue(&cloud)
            .iter()
            .any(|m| m.body.contains("Capacity Block Expiration Warning"))
    );
    let state = |cloud: &FakeCloud| instance_state(cloud, &id);
    clock.advance(Duration::from_secs(9 * 60));
    cloud.step();
    assert_eq!(
        state(&cloud),
        InstanceState::Running,
        "31 minutes before the end"
    );
    clock.advance(Duration::from_secs(60));
    cloud.step();
    assert_eq!(
        state(&cloud),
        InstanceState::ShuttingDown,
        "30 minutes before the end"
    );
}

#[test]
fn an_interruptible_reservation_is_reclaimed_with_a_two_minute_warning() {
    let (cloud, clock) = with_reservation(reservation(
        "cr-int",
        "m5.large",
        2,
        "targeted",
        ReservationType::Interruptible,
    ));
    targeting(
        &cloud,
        "lt-int",
        "cr-int",
        Some("interruptible-capacity-reservation"),
    );
    let mut o = over(&cloud, "m5.large", "us-east-1a");
    o.launch_template_name = "lt-int".into();
    let mut request = fleet(CapacityType::OnDemand, vec![o], 2);
    request.reservation = Some(ReservationType::Interruptible);
    let out = block_on(cloud.create_fleet(request)).unwrap();
    assert_eq!(out.instances.len(), 2);
    clock.advance(Duration::from_secs(10));
    cloud.step();
    let taken = cloud.reclaim_capacity_reservation("cr-int", 1);
    assert_eq!(taken.len(), 1);
    let messages =
        block_on(cloud.receive_messages(&cloud.config().queue_url, 10, Duration::from_secs(1)))
            .unwrap();
    assert!(messages.iter().any(|m| {
        m.body
            .contains("EC2 Capacity Reservation Instance Interruption Warning")
            && m.body.contains(&taken[0])
    }));
    let state = |cloud: &FakeCloud| instance_state(cloud, &taken[0]);
    clock.advance(Duration::from_secs(119));
    cloud.step();
    assert_eq!(state(&cloud), InstanceState::Running);
    clock.advance(Duration::from_secs(1));
    cloud.step();
    assert_eq!(state(&cloud), InstanceState::ShuttingDown);
    let listed =
        block_on(cloud.describe_capacity_reservations(CapacityReservationQuery::default()))
            .unwrap();
    assert_eq!(listed[0].total_instance_count, 1, "the owner took one back");
}

#[test]
fn a_default_reservation_that_ends_leaves_its_instances_on_demand() {
    let mut r = reservation(
        "cr-end",
        "m5.large",
        1,
        "targeted",
        ReservationType::Default,
    );
    r.lasts = Some(Duration::from_secs(3600));
    let (cloud, clock) = with_reservation(r);
    targeting(&cloud, "lt-cr", "cr-end", None);
    let mut o = over(&cloud, "m5.large", "us-east-1a");
    o.launch_template_name = "lt-cr".into();
    let out = block_on(cloud.create_fleet(fleet(CapacityType::OnDemand, vec![o], 1))).unwrap();
    let id = out.instances[0].id.clone();
    clock.advance(Duration::from_secs(3600));
    cloud.step();
    let rec = record(&cloud, &id);
    assert_eq!(rec.instance.state, InstanceState::Running);
    assert_eq!(rec.instance.capacity_reservation_id, None);
    assert!(rec.price > 0.0, "billed on-demand now");
    assert_eq!(cloud.reservation_cost_per_hour(), 0.0);
}
