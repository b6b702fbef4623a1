"""personal-rm: personalized reward models. This package is the Ray-free core library."""
