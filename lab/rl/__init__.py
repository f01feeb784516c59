"""RL objectives: PPO on gymnax (``ppo``) whose policy objective is a drift function
(``objectives``), scored by ``scoring`` and replayed by ``replay``."""
