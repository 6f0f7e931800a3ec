data "aws_partition" "current" {}
data "aws_caller_identity" "current" {}

locals {
  partition  = data.aws_partition.current.partition
  region     = var.region
  account_id = data.aws_caller_identity.current.account_id

  # SSM parameter ARNs drop the leading slash of hierarchical names.
  token_parameter_arn = "arn:${local.partition}:ssm:${local.region}:${local.account_id}:parameter/${trimprefix(var.token_ssm_parameter_name, "/")}"

  ami_id = var.ami_id != null ? var.ami_id : data.aws_ami.debian12[0].id

  # The burst pool: the tag burst.ec2.tag selects in the responder's config.
  burst_tag_key   = "failover-responder-burst"
  burst_tag_value = var.burst_service
  burst_ami_id    = coalesce(var.burst_ami_id, local.ami_id)

  # The tag on every resource of the stack (default_tags in versions.tf). The budget selects
  # its costs by it, so both read it from here and cannot drift apart.
  application_tag_value = "failover-responder"
  budget_enabled        = coalesce(var.budget_monthly_limit_usd, 0) > 0
  budget_sns_topic_arns = var.budget_alert_sns_topic_arn == null ? [] : [var.budget_alert_sns_topic_arn]

  responder_config_yaml = coalesce(var.responder_config_yaml, file("${path.module}/../config/failover-responder.yaml"))

  # Rendered in two steps: the bootstrap script, then cloud-config that carries it (and the
  # config) base64-encoded, so no file content can break the YAML's indentation.
  bootstrap_sh = templatefile("${path.module}/templates/bootstrap.sh.tftpl", {
    package_url       = var.responder_package_url
    package_sha256    = var.responder_package_sha256
    responder_version = var.responder_version
    token_parameter   = var.token_ssm_parameter_name
    region            = local.region
    container_images  = join(" ", var.container_images)
    responder_port    = var.responder_port
  })

  user_data = templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
    config_b64     = base64encode(local.responder_config_yaml)
    bootstrap_b64  = base64encode(local.bootstrap_sh)
    responder_port = var.responder_port
  })
}

# Official Debian 12 (bookworm) images, published by Debian's AWS account.
data "aws_ami" "debian12" {
  count       = var.ami_id == null ? 1 : 0
  most_recent = true
  owners      = ["136693071363"]

  filter {
    name   = "name"
    values = ["debian-12-${var.architecture}-*"]
  }

  filter {
    name   = "architecture"
    values = [var.architecture == "amd64" ? "x86_64" : "arm64"]
  }

  filter {
    name   = "virtualization-type"
    values = ["hvm"]
  }
}

# --- Network -------------------------------------------------------------------------------

resource "aws_security_group" "responder" {
  name        = "${var.name}-standby"
  description = "Failover responder standby host: webhook from Alertmanager only"
  vpc_id      = var.vpc_id

  # Rules are separate resources below (one per source), so that adding a scrape CIDR does
  # not rewrite the webhook rule.
  lifecycle {
    create_before_destroy = true
  }

  tags = {
    Name = "${var.name}-standby"
  }
}

# The only way in: the responder's port, from Alertmanager. No SSH (there is no key pair),
# and NEVER the Docker API (2375/2376): Docker listens on its unix socket only, the bootstrap
# verifies that, and var.responder_port refuses those ports.
resource "aws_vpc_security_group_ingress_rule" "webhook" {
  security_group_id = aws_security_group.responder.id
  description       = "Alertmanager webhook (and Prometheus scrape) to the responder"
  cidr_ipv4         = var.alertmanager_cidr
  ip_protocol       = "tcp"
  from_port         = var.responder_port
  to_port           = var.responder_port
}

resource "aws_vpc_security_group_ingress_rule" "scrape" {
  for_each = toset(var.prometheus_cidrs)

  security_group_id = aws_security_group.responder.id
  description       = "Prometheus scrape of the responder's /metrics"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = var.responder_port
  to_port           = var.responder_port
}

# Out: HTTPS (SSM, the package, container registries, Debian mirrors), HTTP (Debian's AWS
# mirror serves apt over HTTP; packages are signature-checked) and Alertmanager's API. DNS,
# NTP and the instance metadata service are link-local and not subject to security groups.
# Add a rule here if the HAProxy Runtime API is reached over TCP.
resource "aws_vpc_security_group_egress_rule" "https" {
  security_group_id = aws_security_group.responder.id
  description       = "HTTPS out: SSM, responder package, container registries"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

# The responder's resync reads Alertmanager's API (GET /api/v2/alerts).
resource "aws_vpc_security_group_egress_rule" "alertmanager_api" {
  count = var.alertmanager_api_port == null ? 0 : 1

  security_group_id = aws_security_group.responder.id
  description       = "Responder resync from Alertmanager's API"
  cidr_ipv4         = var.alertmanager_cidr
  ip_protocol       = "tcp"
  from_port         = var.alertmanager_api_port
  to_port           = var.alertmanager_api_port
}

resource "aws_vpc_security_group_egress_rule" "http" {
  security_group_id = aws_security_group.responder.id
  description       = "HTTP out: Debian package mirror (signed packages)"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
}

# HAProxy (on-prem) to the burst units' service port: their traffic and health checks. The
# rule is on the shared group, so it also opens that port on the standby host.
resource "aws_vpc_security_group_ingress_rule" "burst_service" {
  for_each = var.burst_instance_count > 0 ? toset(var.haproxy_cidrs) : toset([])

  security_group_id = aws_security_group.responder.id
  description       = "On-prem HAProxy to the burst units' service"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = var.burst_service_port
  to_port           = var.burst_service_port
}

# --- Identity --------------------------------------------------------------------------------

data "aws_iam_policy_document" "assume_ec2" {
  statement {
    sid     = "EC2AssumeRole"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }

  }
}

resource "aws_iam_role" "responder" {
  name                 = "${var.name}-standby"
  description          = "Failover responder standby host: read its token, start/stop burst instances"
  assume_role_policy   = data.aws_iam_policy_document.assume_ec2.json
  max_session_duration = 3600
}

# Least privilege, statement by statement.
data "aws_iam_policy_document" "responder" {
  # The webhook token, and nothing else in Parameter Store.
  statement {
    sid       = "ReadWebhookToken"
    actions   = ["ssm:GetParameter"]
    resources = [local.token_parameter_arn]
  }

  # Only with a customer-managed key, only through SSM, only for that parameter.
  dynamic "statement" {
    for_each = var.token_kms_key_arn == null ? [] : [var.token_kms_key_arn]
    content {
      sid       = "DecryptWebhookToken"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["ssm.${local.region}.amazonaws.com"]
      }

      condition {
        test     = "StringEquals"
        variable = "kms:EncryptionContext:PARAMETER_ARN"
        values   = [local.token_parameter_arn]
      }
    }
  }

  # Cloud bursting: start and stop instances, but only those carrying the burst tag.
  statement {
    sid     = "StartStopBurstInstances"
    actions = ["ec2:StartInstances", "ec2:StopInstances"]
    resources = [
      "arn:${local.partition}:ec2:${local.region}:${local.account_id}:instance/*",
    ]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/${var.burst_tag_key}"
      values   = [var.burst_tag_value]
    }
  }

  # The burst pool built below: only instances tagged failover-responder-burst=<burst_service>.
  dynamic "statement" {
    for_each = var.burst_instance_count > 0 ? [local.burst_tag_value] : []
    content {
      sid     = "StartStopBurstPool"
      actions = ["ec2:StartInstances", "ec2:StopInstances"]
      resources = [
        "arn:${local.partition}:ec2:${local.region}:${local.account_id}:instance/*",
      ]

      condition {
        test     = "StringEquals"
        variable = "aws:ResourceTag/${local.burst_tag_key}"
        values   = [statement.value]
      }
    }
  }

  # Describe* has no resource-level permissions in EC2: "*" is the only possible resource.
  # It is read-only, and limited to this region.
  statement {
    sid       = "DescribeInstances"
    actions   = ["ec2:DescribeInstances", "ec2:DescribeInstanceStatus"]
    resources = ["*"]

    condition {
      test     = "StringEquals"
      variable = "aws:RequestedRegion"
      values   = [local.region]
    }
  }
}

resource "aws_iam_role_policy" "responder" {
  name   = "${var.name}-standby"
  role   = aws_iam_role.responder.id
  policy = data.aws_iam_policy_document.responder.json
}

resource "aws_iam_instance_profile" "responder" {
  name = "${var.name}-standby"
  role = aws_iam_role.responder.name
}

# --- The host --------------------------------------------------------------------------------

resource "aws_instance" "standby" {
  ami                    = local.ami_id
  instance_type          = var.instance_type
  subnet_id              = var.subnet_id
  vpc_security_group_ids = [aws_security_group.responder.id]
  iam_instance_profile   = aws_iam_instance_profile.responder.name

  # Private only: Alertmanager reaches it over the VPN / Direct Connect, which also keeps the
  # bearer token (plain HTTP) off the internet.
  associate_public_ip_address = false

  monitoring    = true # 1-minute CloudWatch metrics
  ebs_optimized = true

  # Gzipped cloud-config: the unit, config and bootstrap are embedded, and compression keeps
  # it well under the 16 KiB user-data limit. cloud-init detects gzip by itself.
  user_data_base64 = base64gzip(local.user_data)
  # The host is cattle: a changed bootstrap means a fresh host. Do not apply during a
  # failover (the responder's state is rebuilt from Alertmanager, but containers restart).
  user_data_replace_on_change = true

  metadata_options {
    http_endpoint = "enabled"
    # IMDSv2 only.
    http_tokens = "required"
    # 1 hop: the responder (on the host) reaches IMDS, the cloud containers (one more hop
    # through Docker's bridge) do not, so they cannot borrow the instance role.
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  root_block_device {
    volume_type           = "gp3"
    volume_size           = var.root_volume_size_gb
    encrypted             = true
    kms_key_id            = var.ebs_kms_key_arn
    delete_on_termination = true
  }

  # Accidental `terraform destroy` / console termination of the standby is a production risk.
  disable_api_termination = true

  tags = {
    Name             = "${var.name}-standby"
    ResponderVersion = var.responder_version
  }
}

# --- Optional burst pool ---------------------------------------------------------------------
#
# burst_instance_count instances that run the service from their AMI / user data, for the
# responder's burst.ec2 (tag: {key: failover-responder-burst, value: <burst_service>}; unit i
# is the i-th instance by id, address '{private_ip}:<burst_service_port>'). Created, then
# stopped by aws_ec2_instance_state: they cost only storage until the responder starts them.
# Same subnet and security group as the standby host; hardened like it, but with a role that
# grants nothing (they need no AWS access) and no termination protection (the count may shrink).

# A role with no policy: the units need no AWS access (attach e.g. AmazonSSMManagedInstanceCore
# to it if you manage them through SSM). An instance with no role at all fails checkov.
resource "aws_iam_role" "burst" {
  count = var.burst_instance_count > 0 ? 1 : 0

  name                 = "${var.name}-burst"
  description          = "Failover responder burst units: no permissions"
  assume_role_policy   = data.aws_iam_policy_document.assume_ec2.json
  max_session_duration = 3600
}

resource "aws_iam_instance_profile" "burst" {
  count = var.burst_instance_count > 0 ? 1 : 0

  name = "${var.name}-burst"
  role = aws_iam_role.burst[0].name
}

resource "aws_instance" "burst" {
  count = var.burst_instance_count

  ami                    = local.burst_ami_id
  instance_type          = var.burst_instance_type
  subnet_id              = var.subnet_id
  vpc_security_group_ids = [aws_security_group.responder.id]
  iam_instance_profile   = aws_iam_instance_profile.burst[0].name

  # Private only: the on-prem HAProxy reaches them over the VPN / Direct Connect.
  associate_public_ip_address = false

  monitoring    = true
  ebs_optimized = true

  user_data = var.burst_user_data

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required" # IMDSv2 only
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  root_block_device {
    volume_type           = "gp3"
    volume_size           = var.root_volume_size_gb
    encrypted             = true
    kms_key_id            = var.ebs_kms_key_arn
    delete_on_termination = true
  }

  tags = {
    Name                  = "${var.name}-burst-${var.burst_service}"
    (local.burst_tag_key) = local.burst_tag_value
  }
}

# Stopped once created. From then on the responder owns the state: ignore_changes keeps a
# later `terraform apply` from stopping units that are serving a burst.
resource "aws_ec2_instance_state" "burst" {
  count = var.burst_instance_count

  instance_id = aws_instance.burst[count.index].id
  state       = "stopped"

  lifecycle {
    ignore_changes = [state]
  }
}

# --- Optional cost budget --------------------------------------------------------------------
#
# The budget alerts of the bursting design: the responder's cost guard (cost.max_instances,
# max_instance_hours_per_day) bounds what bursting may start, and this budget tells people
# when the month's bill of what this stack built heads past budget_monthly_limit_usd, whatever
# the cause (a long burst, a failover that stayed in the cloud, a pool left running).
#
# It sees only costs tagged Application=failover-responder, and only once that tag is
# activated as a cost allocation tag (Billing console, payer account; it takes effect up to
# 24 h later, for costs from then on). Costs this stack does not create or cannot tag (a NAT
# gateway and the traffic through it, CloudWatch metrics) are not in it; any other resource
# carrying the same tag in the account (a second deployment of this stack) is.
resource "aws_budgets_budget" "monthly" {
  count = local.budget_enabled ? 1 : 0

  name         = "${var.name}-standby-and-burst"
  budget_type  = "COST"
  limit_amount = tostring(var.budget_monthly_limit_usd)
  limit_unit   = "USD"
  time_unit    = "MONTHLY"

  cost_filter {
    name   = "TagKeyValue"
    values = [format("user:Application$%s", local.application_tag_value)]
  }

  # What the stack spends, not what credits or refunds happen to offset: a promotional credit
  # would otherwise hide a burst pool left running.
  cost_types {
    include_credit = false
    include_refund = false
  }

  # Early warning: the month's forecast passes 80 % (Budgets forecasts only once it has some
  # weeks of usage history, so a new stack gets this one late).
  notification {
    comparison_operator        = "GREATER_THAN"
    threshold                  = 80
    threshold_type             = "PERCENTAGE"
    notification_type          = "FORECASTED"
    subscriber_email_addresses = var.budget_alert_emails
    subscriber_sns_topic_arns  = local.budget_sns_topic_arns
  }

  # The money is spent: actual cost passes the limit.
  notification {
    comparison_operator        = "GREATER_THAN"
    threshold                  = 100
    threshold_type             = "PERCENTAGE"
    notification_type          = "ACTUAL"
    subscriber_email_addresses = var.budget_alert_emails
    subscriber_sns_topic_arns  = local.budget_sns_topic_arns
  }

  lifecycle {
    # A budget nobody hears about is no alert. (Checked here, not in a variable validation:
    # those may refer only to their own variable before Terraform 1.9.)
    precondition {
      condition     = length(var.budget_alert_emails) > 0 || var.budget_alert_sns_topic_arn != null
      error_message = "budget_monthly_limit_usd is set but nobody would be notified: set budget_alert_emails and/or budget_alert_sns_topic_arn."
    }
  }
}
