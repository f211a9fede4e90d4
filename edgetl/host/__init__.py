"""Host side (torch): training engine, run directories, export orchestration, the gate."""
