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
