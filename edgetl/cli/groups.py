"""The list of built-in commands, in ``--help`` order."""

from __future__ import annotations

import click

from edgetl.cli.agent_cmd import agent_group
from edgetl.cli.bench_cmd import bench_command
from edgetl.cli.bundle_cmd import bundle_group
from edgetl.cli.collect_cmd import collect_command
from edgetl.cli.config_cmd import config_group
from edgetl.cli.data_cmd import data_group
from edgetl.cli.deploy_cmd import deploy_command
from edgetl.cli.device_cmd import device_group
from edgetl.cli.export_cmd import export_cmd
from edgetl.cli.fleet_cmd import fleet_group, push_command
from edgetl.cli.keys_cmd import keys_group
from edgetl.cli.plugins_cmd import plugins_group
from edgetl.cli.train_cmd import eval_command, predict_command, train_command

COMMANDS: list[click.Command] = [
    plugins_group,
    data_group,
    config_group,
    train_command,
    eval_command,
    predict_command,
    export_cmd,
    bundle_group,
    keys_group,
    agent_group,
    deploy_command,
    device_group,
    push_command,
    fleet_group,
    collect_command,
    bench_command,
]
