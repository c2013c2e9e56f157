//! The AWS CLI (botocore: a client nobody here wrote) against a served simulation's AWS endpoint: it reads
//! the catalog, sees the controller's launches, launches and terminates an instance of its own, reads an
//! SSM parameter, and puts a spot interruption on the queue that the controller then acts on. Skipped,
//! loudly, where the AWS CLI is not installed (`.ci/run` installs it: pip install awscli).

use std::process::Command;
use std::time::{Duration, Instant};

use dovetail_sim::Scenario;

const SCENARIO: &str = concat!(
    "name: awscli
seed: 5
duration: 4h
cloud:
  zones: [us-east-1a, us-east-1b]
  launch_latency: 2s..4s
  boot_to_ready: 20s..30s
  capacity_reservations:
    - {id: cr-0c1i00000000001, instance_type: c5.large, zone: us-east-1a, count: 2, tags: {purpose: cli}}
manifests:
",
    dovetail_tests::default_node_class_and_pool_head!(),
    "            - {key: karpenter.sh/capacity-type, operator: In, values: [spot]}
            - {key: node.kubernetes.io/instance-type, operator: In, values: [m5.large, m5.xlarge]}
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web, namespace: default}
    spec:
      replicas: 3
      selector: {matchLabels: {app: web}}
      template:
        metadata: {labels: {app: web}}
        spec:
          containers:
            - name: web
              image: nginx
              resources: {requests: {cpu: 500m, memory: 512Mi}}
"
);

fn aws_installed() -> bool {
    Command::new("aws")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

struct Aws {
    endpoint: String,
}

impl Aws {
    /// Run `aws ARGS --output text`; (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        // `--endpoint-url` as well as AWS_ENDPOINT_URL: AWS CLI v1 sends SQS calls in us-east-1 to
        // queue.amazonaws.com unless the flag names another endpoint.
        let out = Command::new("aws")
            .args(["--endpoint-url", &self.endpoint])
            .args(args)
            .args(["--output", "text"])
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", "sim")
            .env("AWS_SECRET_ACCESS_KEY", "sim")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_MAX_ATTEMPTS", "1")
            .env("AWS_PAGER", "")
            .output()
            .expect("aws runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "aws {args:?} failed:\n{err}");
        out
    }

    /// Poll until the output satisfies `done` (60 s of wall time at most).
    fn wait_for(&self, args: &[&str], what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.ok(args);
            if done(&out) {
                return out;
            }
            assert!(Instant::now() < deadline, "waited for {what}; last:\n{out}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

#[test]
fn the_aws_cli_reads_and_drives_a_served_simulation() {
    if !aws_installed() {
        eprintln!(
            "SKIPPED the_aws_cli_reads_and_drives_a_served_simulation: the AWS CLI is not installed (pip install awscli)"
        );
        return;
    }
    let scenario = Scenario::parse("awscli.yaml", SCENARIO).unwrap();
    let dir = std::env::temp_dir().join(format!("dovetail-awscli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dovetail_tests::ServedRun { serving, stop, run } =
        dovetail_tests::serve_scenario(scenario, 40.0, &dir);
    let aws = Aws {
        endpoint: format!("http://{}", serving.aws_addr),
    };

    // The catalog, as EC2 describes it.
    let vcpus = aws.ok(&[
        "ec2",
        "describe-instance-types",
        "--instance-types",
        "m5.large",
        "--query",
        "InstanceTypes[0].[VCpuInfo.DefaultVCpus,MemoryInfo.SizeInMiB,ProcessorInfo.SupportedArchitectures[0]]",
    ]);
    assert_eq!(
        vcpus.split_whitespace().collect::<Vec<_>>(),
        ["2", "8192", "x86_64"]
    );
    let offered = aws.ok(&[
        "ec2",
        "describe-instance-type-offerings",
        "--location-type",
        "availability-zone",
        "--filters",
        "Name=instance-type,Values=m5.large",
        "--query",
        "InstanceTypeOfferings[].Location",
    ]);
    assert!(offered.contains("us-east-1"), "{offered}");

    // The controller's spot launches, by Karpenter's tag.
    let launched = aws.wait_for(
        &[
            "ec2",
            "describe-instances",
            "--filters",
            "Name=tag-key,Values=karpenter.sh/nodeclaim",
            "Name=instance-state-name,Values=running",
            "--query",
            "Reservations[].Instances[].[InstanceId,InstanceType,InstanceLifecycle]",
        ],
        "the controller's instances to run",
        |o| !o.is_empty(),
    );
    let first = launched.lines().next().unwrap().to_string();
    let cols: Vec<&str> = first.split_whitespace().collect();
    assert!(cols[1].starts_with("m5."), "{launched}");
    assert_eq!(cols[2], "spot", "{launched}");

    // An image from SSM, a launch template, an instant fleet of one, and its termination.
    let image = aws.ok(&[
        "ssm",
        "get-parameter",
        "--name",
        "/aws/service/eks/optimized-ami/1.33/amazon-linux-2023/x86_64/standard/recommended/image_id",
        "--query",
        "Parameter.Value",
    ]);
    assert!(image.starts_with("ami-"), "{image}");
    let subnet = aws.ok(&[
        "ec2",
        "describe-subnets",
        "--filters",
        "Name=availability-zone,Values=us-east-1a",
        "--query",
        "Subnets[0].SubnetId",
    ]);
    assert!(subnet.starts_with("subnet-"), "{subnet}");
    let template = aws.ok(&[
        "ec2",
        "create-launch-template",
        "--launch-template-name",
        "from-the-cli",
        "--launch-template-data",
        &format!("{{\"ImageId\":\"{image}\",\"MetadataOptions\":{{\"HttpTokens\":\"required\"}}}}"),
        "--query",
        "LaunchTemplate.LaunchTemplateId",
    ]);
    assert!(template.starts_with("lt-"), "{template}");
    let fleet = aws.ok(&[
        "ec2",
        "create-fleet",
        "--type",
        "instant",
        "--launch-template-configs",
        &format!("[{{\"LaunchTemplateSpecification\":{{\"LaunchTemplateName\":\"from-the-cli\",\"Version\":\"$Latest\"}},\"Overrides\":[{{\"InstanceType\":\"c5.large\",\"SubnetId\":\"{subnet}\"}}]}}]"),
        "--target-capacity-specification",
        "TotalTargetCapacity=1,DefaultTargetCapacityType=on-demand",
        "--tag-specifications",
        "ResourceType=instance,Tags=[{Key=owner,Value=cli}]",
        "--query",
        "Instances[0].InstanceIds[0]",
    ]);
    assert!(fleet.starts_with("i-"), "{fleet}");
    let state = aws.wait_for(
        &[
            "ec2",
            "describe-instances",
            "--filters",
            "Name=tag:owner,Values=cli",
            "--query",
            "Reservations[].Instances[].[InstanceId,ImageId,Placement.AvailabilityZone]",
        ],
        "the CLI's instance to be listed",
        |o| o.contains(&fleet),
    );
    assert!(
        state.contains(&image) && state.contains("us-east-1a"),
        "{state}"
    );

    // The CLI's on-demand allocation strategy is honoured: prioritized takes the pricier type the
    // priorities put first.
    let prioritized = aws.ok(&[
        "ec2",
        "create-fleet",
        "--type",
        "instant",
        "--launch-template-configs",
        &format!("[{{\"LaunchTemplateSpecification\":{{\"LaunchTemplateName\":\"from-the-cli\",\"Version\":\"$Latest\"}},\"Overrides\":[{{\"InstanceType\":\"c5.large\",\"SubnetId\":\"{subnet}\",\"Priority\":1}},{{\"InstanceType\":\"c5.xlarge\",\"SubnetId\":\"{subnet}\",\"Priority\":0}}]}}]"),
        "--target-capacity-specification",
        "TotalTargetCapacity=1,DefaultTargetCapacityType=on-demand",
        "--on-demand-options",
        "AllocationStrategy=prioritized",
        "--query",
        "Instances[0].InstanceType",
    ]);
    assert_eq!(prioritized, "c5.xlarge");

    // A capacity reservation, as the CLI lists it, and a launch that targets it.
    let reservation = aws.ok(&[
        "ec2",
        "describe-capacity-reservations",
        "--filters",
        "Name=tag:purpose,Values=cli",
        "Name=state,Values=active",
        "--query",
        "CapacityReservations[0].[CapacityReservationId,InstanceType,AvailableInstanceCount,InstanceMatchCriteria]",
    ]);
    assert_eq!(
        reservation.split_whitespace().collect::<Vec<_>>(),
        ["cr-0c1i00000000001", "c5.large", "2", "targeted"]
    );
    aws.ok(&[
        "ec2",
        "create-launch-template",
        "--launch-template-name",
        "into-the-reservation",
        "--launch-template-data",
        &format!("{{\"ImageId\":\"{image}\",\"CapacityReservationSpecification\":{{\"CapacityReservationPreference\":\"capacity-reservations-only\",\"CapacityReservationTarget\":{{\"CapacityReservationId\":\"cr-0c1i00000000001\"}}}}}}"),
    ]);
    let reserved = aws.ok(&[
        "ec2",
        "create-fleet",
        "--type",
        "instant",
        "--launch-template-configs",
        &format!("[{{\"LaunchTemplateSpecification\":{{\"LaunchTemplateName\":\"into-the-reservation\",\"Version\":\"$Latest\"}},\"Overrides\":[{{\"InstanceType\":\"c5.large\",\"SubnetId\":\"{subnet}\"}}]}}]"),
        "--target-capacity-specification",
        "TotalTargetCapacity=1,DefaultTargetCapacityType=on-demand",
        "--tag-specifications",
        "ResourceType=instance,Tags=[{Key=owner,Value=cli-reserved}]",
        "--query",
        "Instances[0].InstanceIds[0]",
    ]);
    assert!(reserved.starts_with("i-"), "{reserved}");
    let inside = aws.wait_for(
        &[
            "ec2",
            "describe-instances",
            "--filters",
            "Name=tag:owner,Values=cli-reserved",
            "--query",
            "Reservations[].Instances[].[CapacityReservationId,CapacityReservationSpecification.CapacityReservationPreference]",
        ],
        "the reserved instance to be listed",
        |o| o.contains("cr-0c1i00000000001"),
    );
    assert!(inside.contains("capacity-reservations-only"), "{inside}");
    let left = aws.ok(&[
        "ec2",
        "describe-capacity-reservations",
        "--capacity-reservation-ids",
        "cr-0c1i00000000001",
        "--query",
        "CapacityReservations[0].AvailableInstanceCount",
    ]);
    assert_eq!(left, "1");
    let terminating = aws.ok(&[
        "ec2",
        "terminate-instances",
        "--instance-ids",
        &fleet,
        "--query",
        "TerminatingInstances[0].CurrentState.Name",
    ]);
    assert_eq!(terminating, "shutting-down");
    // An unknown id is EC2's error, with its code.
    let (ok, _, err) = aws.run(&[
        "ec2",
        "describe-instances",
        "--instance-ids",
        "i-0123456789abcdef0",
    ]);
    assert!(!ok && err.contains("InvalidInstanceID.NotFound"), "{err}");

    // A spot interruption warning through SQS: the controller drains and replaces the node, and the
    // instance is terminated (by the controller: the fake reclaims only what it interrupts itself).
    // The victim: one of the controller's spot instances running now (consolidation may have replaced
    // the ones seen earlier).
    let running = aws.ok(&[
        "ec2",
        "describe-instances",
        "--filters",
        "Name=tag-key,Values=karpenter.sh/nodeclaim",
        "Name=instance-state-name,Values=running",
        "--query",
        "Reservations[].Instances[].InstanceId",
    ]);
    let Some(victim) = running.split_whitespace().next().map(str::to_string) else {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let outcome = run.join().unwrap().unwrap();
        panic!(
            "no running instance of the controller's:\n{}",
            outcome.trace
        );
    };
    let queue = aws.ok(&[
        "sqs",
        "get-queue-url",
        "--queue-name",
        "sim",
        "--query",
        "QueueUrl",
    ]);
    assert!(queue.ends_with("/sim"), "{queue}");
    let body = fakecloud::sqs::spot_interruption_warning(
        "us-east-1",
        &victim,
        jiff::Timestamp::from_second(1_767_225_600).unwrap(),
    );
    let sent = aws.ok(&[
        "sqs",
        "send-message",
        "--queue-url",
        &queue,
        "--message-body",
        &body,
        "--query",
        "MessageId",
    ]);
    assert!(!sent.is_empty());
    aws.wait_for(
        &[
            "ec2",
            "describe-instances",
            "--instance-ids",
            &victim,
            "--query",
            "Reservations[].Instances[].State.Name",
        ],
        "the interrupted instance to be terminated",
        |o| o == "shutting-down" || o == "terminated",
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcome = run.join().unwrap().unwrap();
    let trace = &outcome.trace;
    // The CLI's writes, as `aws` lines at the simulated time they landed.
    for write in [
        "ec2 CreateLaunchTemplate",
        "ec2 CreateFleet",
        "ec2 TerminateInstances",
        "sqs SendMessage",
    ] {
        assert!(
            trace
                .lines()
                .any(|l| l.contains(" aws ") && l.ends_with(write)),
            "no `aws {write}` line in the trace"
        );
    }
    assert!(
        trace.contains(&format!("spot-interruption for {victim}: draining")),
        "the controller did not act on the interruption of {victim}:\n{}",
        trace
            .lines()
            .filter(|l| l.contains(&victim) || l.contains(" aws "))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
