output "webhook_url" {
  description = "Alertmanager webhook_configs url for the failover-responder receiver (alertmanager/alertmanager.yml)."
  value       = "http://${aws_instance.standby.private_ip}:${var.responder_port}/api/v1/alerts"
}

output "metrics_target" {
  description = "Prometheus scrape target of the responder (job failover-responder in prometheus/prometheus.yml)."
  value       = "${aws_instance.standby.private_ip}:${var.responder_port}"
}

output "instance_id" {
  description = "The standby host."
  value       = aws_instance.standby.id
}

output "security_group_id" {
  description = "Security group of the standby host (add egress here for a TCP HAProxy Runtime API)."
  value       = aws_security_group.responder.id
}

output "role_arn" {
  description = "Instance role; tag burst instances with burst_tag_key=burst_tag_value for it to start/stop them."
  value       = aws_iam_role.responder.arn
}

output "burst_pool_tag_key" {
  description = "Tag key of the burst pool: burst.ec2.tag.key in the responder's config."
  value       = local.burst_tag_key
}

output "burst_pool_tag_value" {
  description = "Tag value of the burst pool (var.burst_service): burst.ec2.tag.value."
  value       = local.burst_tag_value
}

output "burst_instance_ids" {
  description = "The burst pool's instances (stopped until the responder starts them); unit i is the i-th id in sorted order."
  value       = sort(aws_instance.burst[*].id)
}

output "budget_name" {
  description = "The AWS Budgets budget of this stack's monthly cost (null: no budget, budget_monthly_limit_usd unset or 0)."
  value       = one(aws_budgets_budget.monthly[*].name)
}
