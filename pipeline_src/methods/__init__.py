"""What trains: timm models and their layer sites, the noises, NoisyNN's positive noise, VPN and its
generators, augmentation; `registry` maps a method's name in the params to its class."""
