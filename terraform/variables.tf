# Inputs. Required ones have no default; terraform.tfvars.example shows a full set.

variable "region" {
  description = "AWS region of the standby host."
  type        = string
}

variable "name" {
  description = "Name prefix for every resource (instance, security group, role)."
  type        = string
  default     = "failover-responder"

  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9-]{0,37}$", var.name))
    error_message = "name: letters, digits and '-', starting with a letter, at most 38 characters (IAM name limits)."
  }
}

variable "vpc_id" {
  description = "VPC of the standby host. Its flow logs and default security group are the VPC owner's business."
  type        = string
}

variable "subnet_id" {
  description = <<-EOT
    Subnet of the standby host: a PRIVATE subnet reachable from Alertmanager over the VPN /
    Direct Connect / peering. It needs outbound HTTPS/HTTP (NAT gateway or VPC endpoints) for
    Debian packages, SSM and the responder package. The instance gets no public IP.
  EOT
  type        = string
}

variable "alertmanager_cidr" {
  description = <<-EOT
    CIDR Alertmanager's webhook calls come from: the ONLY source allowed to reach the
    responder's port. Keep it as narrow as possible (a /32 for a single Alertmanager).
  EOT
  type        = string

  validation {
    condition     = can(cidrhost(var.alertmanager_cidr, 0)) && !contains(["0.0.0.0/0", "::/0"], var.alertmanager_cidr)
    error_message = "alertmanager_cidr must be a valid CIDR and not the whole internet: the webhook starts and stops production capacity."
  }
}

variable "alertmanager_api_port" {
  description = <<-EOT
    Port of Alertmanager's API in alertmanager_cidr. The responder reads active alerts from
    it to repair lost or truncated webhooks (its optional `alertmanager:` config section);
    null opens no egress for it.
  EOT
  type        = number
  default     = 9093
}

variable "prometheus_cidrs" {
  description = "Extra CIDRs allowed to scrape the responder's /metrics on the same port (empty when Prometheus sits in alertmanager_cidr)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.prometheus_cidrs : can(cidrhost(c, 0)) && !contains(["0.0.0.0/0", "::/0"], c)])
    error_message = "prometheus_cidrs: valid CIDRs only, and not the whole internet."
  }
}

variable "responder_port" {
  description = "TCP port the responder listens on (webhook, status API and /metrics)."
  type        = number
  default     = 9095

  validation {
    # The Docker API ports are refused outright: nothing in this stack may ever open them.
    condition     = var.responder_port > 1023 && var.responder_port < 65536 && !contains([2375, 2376], var.responder_port)
    error_message = "responder_port must be an unprivileged port and never 2375/2376 (the Docker API ports)."
  }
}

variable "instance_type" {
  description = "EC2 instance type. Must match var.architecture and be EBS-optimized capable (t3, m6i, t4g, ...)."
  type        = string
  default     = "t3.small"
}

variable "architecture" {
  description = "CPU architecture of the AMI and of the responder package: amd64 or arm64."
  type        = string
  default     = "amd64"

  validation {
    condition     = contains(["amd64", "arm64"], var.architecture)
    error_message = "architecture must be amd64 or arm64."
  }
}

variable "ami_id" {
  description = "AMI to use. Null: the newest official Debian 12 AMI for var.architecture (pin one in production so a new AMI does not replace the host on the next apply)."
  type        = string
  default     = null
}

variable "root_volume_size_gb" {
  description = "Root volume size (GiB); holds Docker images of the cloud containers."
  type        = number
  default     = 20
}

variable "ebs_kms_key_arn" {
  description = "Customer-managed KMS key for the root volume. Null: the account's default EBS key (still encrypted)."
  type        = string
  default     = null
}

variable "responder_version" {
  description = "Version of the responder being deployed (tag and log only; the URL and checksum decide what runs)."
  type        = string
}

variable "responder_package_url" {
  description = "HTTPS URL of the failover-responder Debian package (.deb, `cargo deb`) for var.architecture (e.g. a release asset or a presigned S3 URL)."
  type        = string

  validation {
    condition     = startswith(var.responder_package_url, "https://")
    error_message = "responder_package_url must be https://: the package installs a program with access to the Docker socket."
  }
}

variable "responder_package_sha256" {
  description = "SHA-256 of the package; the bootstrap refuses to install anything else."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.responder_package_sha256))
    error_message = "responder_package_sha256 must be 64 lowercase hex digits."
  }
}

variable "responder_config_yaml" {
  description = <<-EOT
    Content of /etc/failover-responder/failover-responder.yaml (no secrets in it: the token
    is read from auth.bearer_token_file). Null: the repository's config/failover-responder.yaml.
    listen_address is overridden to 0.0.0.0:<responder_port> on this host by a systemd drop-in.
  EOT
  type        = string
  default     = null
}

variable "container_images" {
  description = "Images the responder's containers use, pulled at boot so that a failover never waits on a registry."
  type        = list(string)
  default     = []
}

variable "token_ssm_parameter_name" {
  description = "Name of the SSM SecureString parameter holding the webhook bearer token (e.g. /failover-responder/token). Created outside Terraform, so the token never lands in state."
  type        = string

  validation {
    condition     = can(regex("^/?[a-zA-Z0-9_.\\-/]+$", var.token_ssm_parameter_name))
    error_message = "token_ssm_parameter_name: a valid SSM parameter name."
  }
}

variable "token_kms_key_arn" {
  description = "Customer-managed KMS key that encrypts the token parameter. Null when it uses the AWS-managed aws/ssm key (no kms:Decrypt grant is needed then)."
  type        = string
  default     = null
}

variable "burst_tag_key" {
  description = "Tag key that marks instances created outside this module (e.g. a cold-standby pool) that the responder may start and stop. The burst pool below has its own tag."
  type        = string
  default     = "failover-responder/burst"
}

variable "burst_tag_value" {
  description = "Value of burst_tag_key on those instances."
  type        = string
  default     = "true"
}

# --- Optional burst instance pool (burst.ec2 in the responder's config) ----------------------

variable "burst_instance_count" {
  description = <<-EOT
    EC2 instances in the burst pool (0: no pool). They are created, booted once (user data
    runs) and left STOPPED: they cost only their EBS volume until the responder starts them.
    Keep it >= the service's burst.max when burst.ec2 selects this pool, and within
    cost.max_instances.
  EOT
  type        = number
  default     = 0

  validation {
    condition     = var.burst_instance_count >= 0 && var.burst_instance_count <= 50 && floor(var.burst_instance_count) == var.burst_instance_count
    error_message = "burst_instance_count: a whole number from 0 to 50."
  }
}

variable "burst_instance_type" {
  description = "EC2 instance type of the burst pool. Must match the AMI's architecture and be EBS-optimized capable."
  type        = string
  default     = "t3.small"
}

variable "burst_ami_id" {
  description = "AMI of the burst pool: an image that runs the service on burst_service_port at boot (or use burst_user_data). Null: the standby host's AMI."
  type        = string
  default     = null
}

variable "burst_user_data" {
  description = "User data (e.g. cloud-config) of the burst pool instances, run on their first boot. Null: none (the AMI runs the service)."
  type        = string
  default     = null
}

variable "burst_service" {
  description = "The responder's service (services.<name>) this pool bursts; the pool is tagged failover-responder-burst=<this>, which burst.ec2.tag selects."
  type        = string
  default     = "onprem-api"

  validation {
    condition     = can(regex("^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$", var.burst_service))
    error_message = "burst_service: letters, digits, '_', '.', '-' (a tag value), at most 63 characters."
  }
}

variable "burst_service_port" {
  description = "Port the service listens on in the burst instances (burst.address '{private_ip}:<port>')."
  type        = number
  default     = 8080

  validation {
    condition     = var.burst_service_port > 0 && var.burst_service_port < 65536 && !contains([2375, 2376], var.burst_service_port)
    error_message = "burst_service_port must be a valid port and never 2375/2376 (the Docker API ports)."
  }
}

variable "haproxy_cidrs" {
  description = <<-EOT
    CIDRs of the on-prem HAProxy servers, allowed to reach burst_service_port (traffic and
    health checks) in the security group shared by the pool and the standby host. Only used
    when the pool exists; empty: no such rule (add your own).
  EOT
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.haproxy_cidrs : can(cidrhost(c, 0)) && !contains(["0.0.0.0/0", "::/0"], c)])
    error_message = "haproxy_cidrs: valid CIDRs only, and not the whole internet."
  }
}

# --- Optional cost budget (the budget alerts of the bursting design) --------------------------

variable "budget_monthly_limit_usd" {
  description = <<-EOT
    Monthly AWS Budgets cost budget (USD) for what this stack creates: the standby host and the
    burst pool (instance hours and volumes). It notifies at 80 % FORECASTED and at 100 % ACTUAL
    of this amount. Null or 0: no budget. It selects costs by the tag
    Application=failover-responder, which every resource of the stack carries (default_tags in
    versions.tf); that tag must be ACTIVATED as a cost allocation tag (Billing console > Cost
    allocation tags, in the payer account), otherwise the budget sees no cost and never alerts.
    Needs budget_alert_emails and/or budget_alert_sns_topic_arn.
  EOT
  type        = number
  default     = null

  validation {
    # A conditional, not ||: null >= 0 is an error, and || evaluates both sides (before 1.12).
    condition     = var.budget_monthly_limit_usd == null ? true : var.budget_monthly_limit_usd >= 0
    error_message = "budget_monthly_limit_usd: an amount in USD greater than 0 (null or 0: no budget)."
  }
}

variable "budget_alert_emails" {
  description = "Email addresses the budget notifies, at 80 % forecasted and 100 % actual (at most 10: the AWS Budgets limit per notification)."
  type        = list(string)
  default     = []

  validation {
    condition     = length(var.budget_alert_emails) <= 10 && alltrue([for e in var.budget_alert_emails : can(regex("^[^@[:space:]]+@[^@[:space:]]+\\.[^@[:space:]]+$", e))])
    error_message = "budget_alert_emails: at most 10 addresses (the AWS Budgets limit), each like name@example.com."
  }
}

variable "budget_alert_sns_topic_arn" {
  description = <<-EOT
    Standard SNS topic the budget also notifies (e.g. one that pages or posts to chat). Null:
    email only. It is not created here: its access policy must allow budgets.amazonaws.com to
    SNS:Publish (and the key policy of an encrypted topic must let Budgets use the key), or
    Budgets cannot deliver to it.
  EOT
  type        = string
  default     = null

  validation {
    condition     = var.budget_alert_sns_topic_arn == null ? true : can(regex("^arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256}$", var.budget_alert_sns_topic_arn))
    error_message = "budget_alert_sns_topic_arn: the ARN of a standard SNS topic (arn:aws:sns:<region>:<account>:<name>)."
  }
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}
