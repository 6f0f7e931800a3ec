# The cloud standby host for the failover responder, on AWS.
#
# What it builds: one EC2 instance (Debian 12) running Docker and the failover responder as a
# hardened systemd service, a security group that lets only Alertmanager (and Prometheus)
# reach the responder's port, and an instance role that can read exactly one SSM parameter
# (the webhook token) and start/stop only instances tagged for bursting.
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
      source  = "hashicorp/aws"
      version = ">= 5.0, < 7.0"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge(var.tags, {
      Application = "failover-responder"
      ManagedBy   = "terraform"
    })
  }
}
