"""`deploy-agent run`: the long-running agent (poll, run, report), its local state file and its
installation identity."""
