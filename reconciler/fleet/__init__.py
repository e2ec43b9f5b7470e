"""Fleet readers: what AWS says a deployment group's hosts are (EC2 instances by tag, Auto Scaling members)."""
