# The cloud standby host for the failover responder, on AWS.
#
# What it builds: one EC2 instance (Debian 12) running Docker and the failover responder as a
# hardened systemd service, a security group that lets only Alertmanager (and Prometheus)
# reach the responder's port, and an instance role that can read exactly one SSM parameter
# (the webhook token) and start/stop only instances tagged for bursting.
#
# Optional burst pool (burst_instance_count > 0, default 0): that many instances of
# burst_ami_id (default: the standby's AMI), in the standby's subnet and security group, tagged
# failover-responder-burst=<burst_service> for the responder's burst.ec2.tag. They are created,
# then left stopped (aws_ec2_instance_state), costing only their volumes until the responder
# starts one per burst unit; the role may start/stop exactly the instances with that tag.
# haproxy_cidrs opens burst_service_port to the on-prem HAProxy. Outputs: burst_pool_tag_*.
#
# Optional cost budget (budget_monthly_limit_usd > 0, default null): an AWS Budgets monthly
# budget over the costs tagged Application=failover-responder (the standby host and the burst
# pool), notifying budget_alert_emails / budget_alert_sns_topic_arn at 80 % forecasted and
# 100 % actual. The tag must be activated as a cost allocation tag first. Output: budget_name.
#
# What it deliberately does not build: the VPC, subnet, VPN/Direct Connect and the token
# parameter. They are inputs, so the token never passes through Terraform state and the
# network stays owned by whoever owns it.
#
# Checked offline by scripts/check-deploy.sh: python-hcl2 parses every file, the templates
# render and parse, and checkov -d terraform reports no failed check.

terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 5.39: default_tags also tag the instances' root volumes, so the budget's tag filter
      # sees them (a stopped burst pool costs only its volumes).
      version = ">= 5.39, < 7.0"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge(var.tags, {
      Application = local.application_tag_value # the budget's cost filter too (main.tf)
      ManagedBy   = "terraform"
    })
  }
}
