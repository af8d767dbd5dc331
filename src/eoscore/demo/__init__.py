"""``eoscore demo``: the README's main job (docs/guide.md, "Quick start")."""

from eoscore.demo.orders import DemoSettings, build_pipeline, expected_totals, generate_orders

__all__ = ["DemoSettings", "build_pipeline", "expected_totals", "generate_orders"]
