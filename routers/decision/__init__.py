"""How a router's score becomes a routing decision, beyond the threshold rule itself
(`routers.thresholds`): what a score means (`probability`: the curve that makes it P(strong
wins)), the model names that ask for a threshold or a strong share (`names`), a controller
that holds a strong share or a spend rate as traffic drifts (`share_control`), and where a
router's scoring may run (`placement`)."""
