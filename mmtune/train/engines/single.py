"""One process: the Engine base class as it is."""
from mmtune.train.engine import Engine

ENGINE = Engine
