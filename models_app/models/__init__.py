from models_app.models.aliases import ModelAlias
from models_app.models.nodes import InferenceNode, ModelPlacement
from models_app.models.registry import LLMModel, ModelConfig
from models_app.models.self_tests import SelfTestResult
from models_app.models.tokens import APIToken
from models_app.models.usage import LatencyRollup, RollupSpan, UsageRecord, UsageRollup

__all__ = [
    "APIToken",
    "InferenceNode",
    "LLMModel",
    "LatencyRollup",
    "ModelAlias",
    "ModelConfig",
    "ModelPlacement",
    "RollupSpan",
    "SelfTestResult",
    "UsageRecord",
    "UsageRollup",
]
