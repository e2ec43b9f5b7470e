"""One deployment on this host, CodeDeploy-compatible: the appspec, the lifecycle runner, hooks, the
journaled install and the deployment-root layout. Used by `deploy-agent run`, `local` and `validate`."""
