from ai_edge_litert.interpreter import *  # noqa: F401,F403
from ai_edge_litert.interpreter import Interpreter  # noqa: F401
